/*-------------------------------------------------------------------------
 *
 * StreamsJoin.java
 *		The Kafka Streams peer of test/bench/live.sh: the same join as
 *		pgkafka_join's, written as a Kafka Streams application would write
 *		it, a KStream-KTable join of the ratings with the movies, with
 *		processing.guarantee exactly_once_v2.
 *
 *	java -cp ... pgkafka_join.bench.StreamsJoin BROKERS APPLICATION_ID
 *		MOVIES_TOPIC RATINGS_TOPIC OUTPUT_TOPIC THREADS STATE_DIR
 *
 * Every setting is Kafka Streams' default but the exactly-once guarantee,
 * num.stream.threads (as many as pgkafka_join's workers), the state
 * directory and the serdes (strings, as the topics hold).  The movies are a
 * KTable (a RocksDB store, its changelog topic created by Streams); each
 * rating is joined with the movie of its key when it is processed, and the
 * result keeps the rating's key and timestamp:
 *
 *	{"id": N, "title": "...", "release_year": Y, "rating": R}
 *
 * The values are handled as text (the movie's JSON with the rating's
 * value added), not parsed as JSON: that is less work than a real
 * application would do, which favours Kafka Streams in the comparison.
 *
 * Prints to stdout, for live.sh: "state STATE" at every change of state,
 * then "ready" once the application is RUNNING and its committed position
 * on MOVIES_TOPIC has reached the end of every partition (the whole catalog
 * is in the table: a rating whose movie is not there yet would have no
 * result in an inner join).  Stops on SIGTERM (KafkaStreams.close).
 *
 *-------------------------------------------------------------------------
 */
package pgkafka_join.bench;

import java.time.Duration;
import java.util.HashMap;
import java.util.Map;
import java.util.Properties;
import java.util.concurrent.CountDownLatch;
import java.util.stream.Collectors;

import org.apache.kafka.clients.admin.Admin;
import org.apache.kafka.clients.admin.AdminClientConfig;
import org.apache.kafka.clients.admin.OffsetSpec;
import org.apache.kafka.clients.consumer.OffsetAndMetadata;
import org.apache.kafka.common.TopicPartition;
import org.apache.kafka.common.serialization.Serdes;
import org.apache.kafka.streams.KafkaStreams;
import org.apache.kafka.streams.StreamsBuilder;
import org.apache.kafka.streams.StreamsConfig;
import org.apache.kafka.streams.kstream.KStream;
import org.apache.kafka.streams.kstream.KTable;

public final class StreamsJoin
{
	private StreamsJoin()
	{
	}

	/* The value of field "rating" of a rating, as text: {"id": N, "rating": R} */
	static String ratingOf(String rating)
	{
		int		p = rating.indexOf("\"rating\"");
		int		end;

		if (p < 0)
			return "null";
		p = rating.indexOf(':', p) + 1;
		while (p < rating.length() && rating.charAt(p) == ' ')
			p++;
		end = p;
		while (end < rating.length() && rating.charAt(end) != ',' && rating.charAt(end) != '}')
			end++;
		return rating.substring(p, end).trim();
	}

	/* The rated movie: the movie's JSON object with the rating added */
	static String join(String rating, String movie)
	{
		int		close = movie.lastIndexOf('}');

		return movie.substring(0, close) + ", \"rating\": " + ratingOf(rating) + "}";
	}

	/* Whether the application's committed position on TOPIC is at its end */
	static boolean caughtUp(Admin admin, String group, String topic) throws Exception
	{
		Map<TopicPartition, OffsetAndMetadata> committed;
		Map<TopicPartition, OffsetSpec> latest = new HashMap<>();
		int		partitions;

		partitions = admin.describeTopics(java.util.List.of(topic)).allTopicNames().get()
			.get(topic).partitions().size();
		for (int p = 0; p < partitions; p++)
			latest.put(new TopicPartition(topic, p), OffsetSpec.latest());
		committed = admin.listConsumerGroupOffsets(group).partitionsToOffsetAndMetadata().get();
		Map<TopicPartition, Long> ends = admin.listOffsets(latest).all().get().entrySet().stream()
			.collect(Collectors.toMap(Map.Entry::getKey, e -> e.getValue().offset()));
		for (Map.Entry<TopicPartition, Long> e : ends.entrySet())
		{
			OffsetAndMetadata c = committed.get(e.getKey());

			if (e.getValue() > 0 && (c == null || c.offset() < e.getValue()))
				return false;
		}
		return true;
	}

	public static void main(String[] args) throws Exception
	{
		if (args.length != 7)
		{
			System.err.println("usage: StreamsJoin BROKERS APPLICATION_ID MOVIES_TOPIC RATINGS_TOPIC OUTPUT_TOPIC THREADS STATE_DIR");
			System.exit(2);
		}
		String	brokers = args[0];
		String	appId = args[1];
		String	moviesTopic = args[2];
		String	ratingsTopic = args[3];
		String	outputTopic = args[4];
		int		threads = Integer.parseInt(args[5]);
		String	stateDir = args[6];

		Properties props = new Properties();

		props.put(StreamsConfig.APPLICATION_ID_CONFIG, appId);
		props.put(StreamsConfig.BOOTSTRAP_SERVERS_CONFIG, brokers);
		props.put(StreamsConfig.PROCESSING_GUARANTEE_CONFIG, StreamsConfig.EXACTLY_ONCE_V2);
		props.put(StreamsConfig.NUM_STREAM_THREADS_CONFIG, threads);
		props.put(StreamsConfig.STATE_DIR_CONFIG, stateDir);
		props.put(StreamsConfig.DEFAULT_KEY_SERDE_CLASS_CONFIG, Serdes.StringSerde.class);
		props.put(StreamsConfig.DEFAULT_VALUE_SERDE_CLASS_CONFIG, Serdes.StringSerde.class);

		StreamsBuilder builder = new StreamsBuilder();
		KTable<String, String> movies = builder.table(moviesTopic);
		KStream<String, String> ratings = builder.stream(ratingsTopic);

		ratings.join(movies, StreamsJoin::join).to(outputTopic);

		KafkaStreams streams = new KafkaStreams(builder.build(), props);
		CountDownLatch stopped = new CountDownLatch(1);

		streams.setStateListener((now, before) -> {
			System.out.println("state " + now);
			System.out.flush();
			if (now == KafkaStreams.State.ERROR || now == KafkaStreams.State.NOT_RUNNING)
				stopped.countDown();
		});
		Runtime.getRuntime().addShutdownHook(new Thread(() -> {
			streams.close(Duration.ofSeconds(30));
			stopped.countDown();
		}));
		streams.start();

		Properties adminProps = new Properties();

		adminProps.put(AdminClientConfig.BOOTSTRAP_SERVERS_CONFIG, brokers);
		try (Admin admin = Admin.create(adminProps))
		{
			while (stopped.getCount() > 0)
			{
				if (streams.state() == KafkaStreams.State.RUNNING &&
					caughtUp(admin, appId, moviesTopic))
				{
					System.out.println("ready");
					System.out.flush();
					break;
				}
				Thread.sleep(200);
			}
		}
		stopped.await();
	}
}
