/*
 * KafkaAdmin.java
 *		Log and consumer-group offset operations on the test broker through
 *		the Kafka Admin API.
 *
 * kcat can produce, consume and list metadata and offsets, but it cannot
 * delete records (move a partition's log start offset), nor read, set or
 * delete the committed offsets of a consumer group without joining it, so
 * broker.sh runs this file with Java's source-file launcher against the
 * broker's own class path (kafka-clients is part of it), as it does
 * CreateTopic.java:
 *
 *		java -cp '.cache/kafka-libs/*' KafkaAdmin.java BOOTSTRAP COMMAND ARG ...
 *
 * Commands:
 *
 *	delete-records TOPIC PARTITION BEFORE_OFFSET
 *		Delete the records of the partition below BEFORE_OFFSET
 *		(Admin.deleteRecords), so that its log start offset (low watermark)
 *		becomes BEFORE_OFFSET; -1 means the high watermark.  Prints the new
 *		low watermark.
 *	group-offset GROUP TOPIC PARTITION
 *		Print the offset GROUP has committed for the partition
 *		(Admin.listConsumerGroupOffsets), or "none" when it has none (or the
 *		group does not exist).
 *	set-group-offset GROUP TOPIC PARTITION OFFSET
 *		Commit OFFSET for the partition on behalf of GROUP
 *		(Admin.alterConsumerGroupOffsets).  The group must have no active
 *		members: the extension only commits offsets to its groups inside
 *		transactions and never joins them, so that holds.
 *	delete-group-offsets GROUP TOPIC
 *		Delete the offsets GROUP has committed for every partition of TOPIC
 *		(Admin.deleteConsumerGroupOffsets on the partitions of TOPIC that
 *		listConsumerGroupOffsets reports for the group).  This is used
 *		rather than deleteConsumerGroups so that the group's offsets for
 *		other topics stay.  Nothing to do (and success) when the group has
 *		no offset for TOPIC.
 *	claim-after GROUP TOPIC PARTITIONS OWNER
 *		Wait until GROUP has committed an offset with metadata on every
 *		partition 0 .. PARTITIONS - 1 of TOPIC (a server's claims of them,
 *		see src/ownership.c), then at once commit on each the current time in
 *		milliseconds with OWNER as metadata, as a server named OWNER
 *		claiming them would.  Prints "watching" once the group could be
 *		read, then the metadata it found.  Gives up after 60 s.
 *
 * Exit status: 0 on success, 1 on any error (with a message on stderr).
 */

import java.util.ArrayList;
import java.util.HashMap;
import java.util.HashSet;
import java.util.List;
import java.util.Map;
import java.util.Properties;
import java.util.Set;
import java.util.concurrent.ExecutionException;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.TimeoutException;

import org.apache.kafka.clients.admin.Admin;
import org.apache.kafka.clients.admin.AdminClientConfig;
import org.apache.kafka.clients.admin.DeletedRecords;
import org.apache.kafka.clients.admin.ListConsumerGroupOffsetsSpec;
import org.apache.kafka.clients.admin.RecordsToDelete;
import org.apache.kafka.clients.consumer.OffsetAndMetadata;
import org.apache.kafka.common.TopicPartition;

public class KafkaAdmin
{
	private static final String USAGE =
		"usage: KafkaAdmin BOOTSTRAP delete-records TOPIC PARTITION BEFORE_OFFSET\n" +
		"       KafkaAdmin BOOTSTRAP group-offset GROUP TOPIC PARTITION\n" +
		"       KafkaAdmin BOOTSTRAP set-group-offset GROUP TOPIC PARTITION OFFSET\n" +
		"       KafkaAdmin BOOTSTRAP delete-group-offsets GROUP TOPIC\n" +
		"       KafkaAdmin BOOTSTRAP claim-after GROUP TOPIC PARTITIONS OWNER";

	private static final long TIMEOUT_SECONDS = 60;

	private static void usage()
	{
		System.err.println(USAGE);
		System.exit(1);
	}

	private static void fail(String message)
	{
		System.err.println(message);
		System.exit(1);
	}

	/* Parse args[i] as a number from min to max, or exit. */
	private static long number(String[] args, int i, String what, long min, long max)
	{
		long		n = 0;

		try
		{
			n = Long.parseLong(args[i]);
		}
		catch (NumberFormatException e)
		{
			fail("invalid " + what + " \"" + args[i] + "\"");
		}
		if (n < min || n > max)
			fail("invalid " + what + " \"" + args[i] + "\"");
		return n;
	}

	private static int partition(String[] args, int i)
	{
		return (int) number(args, i, "partition", 0, Integer.MAX_VALUE);
	}

	/* Committed offsets of GROUP, all of them or those of the given partitions. */
	private static Map<TopicPartition, OffsetAndMetadata>
	groupOffsets(Admin admin, String group, List<TopicPartition> partitions)
		throws Exception
	{
		ListConsumerGroupOffsetsSpec spec = new ListConsumerGroupOffsetsSpec();

		if (partitions != null)
			spec.topicPartitions(partitions);
		return admin.listConsumerGroupOffsets(Map.of(group, spec))
			.partitionsToOffsetAndMetadata(group)
			.get(TIMEOUT_SECONDS, TimeUnit.SECONDS);
	}

	private static void deleteRecords(Admin admin, TopicPartition tp, long before)
		throws Exception
	{
		DeletedRecords deleted;
		int			partitions;

		/*
		 * deleteRecords retries its metadata look-up without pause until the
		 * timeout when the topic does not exist: check the partition first.
		 */
		partitions = admin.describeTopics(List.of(tp.topic())).allTopicNames()
			.get(TIMEOUT_SECONDS, TimeUnit.SECONDS)
			.get(tp.topic()).partitions().size();
		if (tp.partition() >= partitions)
			fail("topic \"" + tp.topic() + "\" has no partition " + tp.partition());

		deleted = admin.deleteRecords(Map.of(tp, RecordsToDelete.beforeOffset(before)))
			.lowWatermarks().get(tp).get(TIMEOUT_SECONDS, TimeUnit.SECONDS);
		System.out.println(deleted.lowWatermark());
	}

	private static void groupOffset(Admin admin, String group, TopicPartition tp)
		throws Exception
	{
		OffsetAndMetadata committed;

		/* A partition without a committed offset maps to null, or is absent. */
		committed = groupOffsets(admin, group, List.of(tp)).get(tp);
		System.out.println(committed == null ? "none" : Long.toString(committed.offset()));
	}

	private static void setGroupOffset(Admin admin, String group, TopicPartition tp,
									   long offset)
		throws Exception
	{
		admin.alterConsumerGroupOffsets(group, Map.of(tp, new OffsetAndMetadata(offset)))
			.partitionResult(tp).get(TIMEOUT_SECONDS, TimeUnit.SECONDS);
	}

	private static void deleteGroupOffsets(Admin admin, String group, String topic)
		throws Exception
	{
		Set<TopicPartition> partitions = new HashSet<>();

		for (Map.Entry<TopicPartition, OffsetAndMetadata> e :
			 groupOffsets(admin, group, null).entrySet())
		{
			if (e.getKey().topic().equals(topic) && e.getValue() != null)
				partitions.add(e.getKey());
		}
		if (partitions.isEmpty())
			return;
		admin.deleteConsumerGroupOffsets(group, partitions)
			.all().get(TIMEOUT_SECONDS, TimeUnit.SECONDS);
	}

	private static void claimAfter(Admin admin, String group, String topic,
								   int partitions, String owner)
		throws Exception
	{
		List<TopicPartition> tps = new ArrayList<>();
		long		deadline = System.currentTimeMillis() + TIMEOUT_SECONDS * 1000;
		String		found = null;

		for (int p = 0; p < partitions; p++)
			tps.add(new TopicPartition(topic, p));
		groupOffsets(admin, group, tps);
		System.out.println("watching");
		System.out.flush();

		/* as fast as the broker answers: the claims are read back soon */
		while (found == null)
		{
			Map<TopicPartition, OffsetAndMetadata> offsets = groupOffsets(admin, group, tps);
			boolean		all = true;

			for (TopicPartition tp : tps)
			{
				OffsetAndMetadata o = offsets.get(tp);

				all &= o != null && !o.metadata().isEmpty();
			}
			if (all)
				found = offsets.get(tps.get(0)).metadata();
			else if (System.currentTimeMillis() > deadline)
				fail("no claims of all " + partitions + " partitions of \"" + topic +
					 "\" in group \"" + group + "\" within " + TIMEOUT_SECONDS + "s");
		}

		Map<TopicPartition, OffsetAndMetadata> claims = new HashMap<>();
		long		now = System.currentTimeMillis();

		for (TopicPartition tp : tps)
			claims.put(tp, new OffsetAndMetadata(now, owner));
		admin.alterConsumerGroupOffsets(group, claims).all()
			.get(TIMEOUT_SECONDS, TimeUnit.SECONDS);
		System.out.println(found);
	}

	public static void main(String[] args) throws Exception
	{
		if (args.length < 2)
			usage();

		String		bootstrap = args[0];
		String		command = args[1];
		String		group = null;
		TopicPartition tp = null;
		long		offset = 0;
		int			count = 0;

		/* Check the arguments before connecting. */
		switch (command)
		{
			case "delete-records":
				if (args.length != 5)
					usage();
				tp = new TopicPartition(args[2], partition(args, 3));
				offset = number(args, 4, "offset", -1, Long.MAX_VALUE);
				break;
			case "group-offset":
				if (args.length != 5)
					usage();
				group = args[2];
				tp = new TopicPartition(args[3], partition(args, 4));
				break;
			case "set-group-offset":
				if (args.length != 6)
					usage();
				group = args[2];
				tp = new TopicPartition(args[3], partition(args, 4));
				offset = number(args, 5, "offset", 0, Long.MAX_VALUE);
				break;
			case "delete-group-offsets":
				if (args.length != 4)
					usage();
				group = args[2];
				break;
			case "claim-after":
				if (args.length != 6)
					usage();
				group = args[2];
				count = (int) number(args, 4, "partition count", 1, Integer.MAX_VALUE);
				break;
			default:
				usage();
		}

		Properties	props = new Properties();

		props.put(AdminClientConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
		props.put(AdminClientConfig.CLIENT_ID_CONFIG, "pgkafka_join-test-kafka-admin");

		try (Admin admin = Admin.create(props))
		{
			switch (command)
			{
				case "delete-records":
					deleteRecords(admin, tp, offset);
					break;
				case "group-offset":
					groupOffset(admin, group, tp);
					break;
				case "set-group-offset":
					setGroupOffset(admin, group, tp, offset);
					break;
				case "delete-group-offsets":
					deleteGroupOffsets(admin, group, args[3]);
					break;
				case "claim-after":
					claimAfter(admin, group, args[3], count, args[5]);
					break;
			}
		}
		catch (ExecutionException e)
		{
			fail(command + " failed: " + e.getCause());
		}
		catch (TimeoutException e)
		{
			fail(command + " failed: no answer within " + TIMEOUT_SECONDS + "s");
		}
	}
}
