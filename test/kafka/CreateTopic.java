/*
 * CreateTopic.java
 *		Create one topic on the test broker through the Kafka Admin API.
 *
 * kcat can produce, consume and list metadata but cannot create topics, and
 * the test broker runs with auto.create.topics.enable=false, so broker.sh
 * runs this file with Java's source-file launcher against the broker's own
 * class path (kafka-clients is part of it):
 *
 *		java -cp '.cache/kafka-libs/*' CreateTopic.java BOOTSTRAP NAME PARTITIONS [KEY=VALUE ...]
 *
 * The replication factor is always 1 (single-node cluster).  KEY=VALUE
 * arguments are topic configurations, e.g. cleanup.policy=compact.
 *
 * Exit status: 0 when the controller accepted the topic, 2 when a topic of
 * that name already exists, 1 on any other error.
 */

import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.Properties;
import java.util.concurrent.ExecutionException;
import java.util.concurrent.TimeUnit;

import org.apache.kafka.clients.admin.Admin;
import org.apache.kafka.clients.admin.AdminClientConfig;
import org.apache.kafka.clients.admin.NewTopic;
import org.apache.kafka.common.errors.TopicExistsException;

public class CreateTopic
{
	public static void main(String[] args) throws Exception
	{
		if (args.length < 3)
		{
			System.err.println("usage: CreateTopic BOOTSTRAP NAME PARTITIONS [KEY=VALUE ...]");
			System.exit(1);
		}

		String		bootstrap = args[0];
		String		name = args[1];
		int			partitions = Integer.parseInt(args[2]);
		Map<String, String> configs = new HashMap<>();

		for (int i = 3; i < args.length; i++)
		{
			int			eq = args[i].indexOf('=');

			if (eq <= 0)
			{
				System.err.println("invalid topic configuration \"" + args[i] + "\": expected KEY=VALUE");
				System.exit(1);
			}
			configs.put(args[i].substring(0, eq), args[i].substring(eq + 1));
		}

		Properties	props = new Properties();

		props.put(AdminClientConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
		props.put(AdminClientConfig.CLIENT_ID_CONFIG, "pgkafka_join-test-create-topic");

		try (Admin admin = Admin.create(props))
		{
			NewTopic	topic = new NewTopic(name, partitions, (short) 1).configs(configs);

			admin.createTopics(List.of(topic)).all().get(60, TimeUnit.SECONDS);
		}
		catch (ExecutionException e)
		{
			if (e.getCause() instanceof TopicExistsException)
			{
				System.err.println("topic \"" + name + "\" already exists");
				System.exit(2);
			}
			System.err.println("could not create topic \"" + name + "\": " + e.getCause());
			System.exit(1);
		}
	}
}
