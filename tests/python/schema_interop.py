"""Confluent's Python serializers against streams' codecs (tests/tests/schema_interop.rs).

    schema_interop.py produce BOOTSTRAP REGISTRY_URL USER:PASSWORD COUNT
        Avro hits to `hit_count_avro` (as the seed's producer makes them, seeded), Protobuf
        and JSON Schema readings to `readings-proto-py` and `readings-json-py`; prints what
        it sent as JSON.
    schema_interop.py consume BOOTSTRAP REGISTRY_URL USER:PASSWORD TOPIC FORMAT COUNT
        Reads COUNT records of TOPIC with the deserializer of FORMAT (avro, protobuf, json);
        prints them as JSON (key, value).
"""
import json
import random
import sys

from confluent_kafka import Consumer, Producer
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
from confluent_kafka.schema_registry.json_schema import JSONDeserializer, JSONSerializer
from confluent_kafka.schema_registry.protobuf import ProtobufDeserializer, ProtobufSerializer
from confluent_kafka.serialization import MessageField, SerializationContext
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

HIT_SCHEMA = json.dumps({
    "type": "record",
    "name": "HitCount",
    "namespace": "seed",
    "fields": [
        {"name": "hits", "type": "long"},
        {"name": "timestamp", "type": "double"},
        {"name": "userId", "type": "string"},
    ],
})

READING_JSON_SCHEMA = json.dumps({
    "title": "Reading",
    "type": "object",
    "properties": {
        "sensor": {"type": "string"},
        "celsius": {"type": "number"},
        "count": {"type": "integer"},
        "tags": {"type": "array", "items": {"type": "string"}},
    },
    "required": ["sensor", "celsius", "count", "tags"],
})


def reading_class():
    """plant.Envelope.Reading (a nested message, second in its file: indexes [1, 0]), built
    from its descriptor (what protoc would generate)."""
    file = descriptor_pb2.FileDescriptorProto(name="plant/reading.proto", package="plant", syntax="proto3")
    other = file.message_type.add(name="Other")
    other.field.add(name="note", number=1, type=9, label=1, json_name="note")
    envelope = file.message_type.add(name="Envelope")
    message = envelope.nested_type.add(name="Reading")
    fields = [("sensor", 9, 1), ("celsius", 1, 1), ("count", 3, 1), ("tags", 9, 3)]
    for number, (name, kind, label) in enumerate(fields, start=1):
        message.field.add(name=name, number=number, type=kind, label=label, json_name=name)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("plant.Envelope.Reading"))


def registry(url, auth):
    return SchemaRegistryClient({"url": url, "basic.auth.user.info": auth})


def readings(count):
    rng = random.Random(11)
    return [
        {
            "sensor": f"s{i % 7}",
            "celsius": round(rng.uniform(-40, 60), 3),
            "count": rng.randrange(-(2**62), 2**62),
            "tags": [f"t{j}" for j in range(i % 3)],
        }
        for i in range(count)
    ]


def produce(bootstrap, url, auth, count):
    client = registry(url, auth)
    producer = Producer({"bootstrap.servers": bootstrap, "batch.num.messages": 1})
    avro = AvroSerializer(client, HIT_SCHEMA)
    rng = random.Random(7)
    hits = [
        {"hits": rng.randint(0, 40), "timestamp": 1_700_000_000 + i * 0.25, "userId": f"user-{rng.randint(0, 9)}"}
        for i in range(count)
    ]
    for hit in hits:
        value = avro(hit, SerializationContext("hit_count_avro", MessageField.VALUE))
        producer.produce("hit_count_avro", value=value)
        producer.poll(0)
    Reading = reading_class()
    proto = ProtobufSerializer(Reading, client, {"use.deprecated.format": False})
    as_json = JSONSerializer(READING_JSON_SCHEMA, client)
    sent = readings(50)
    for r in sent:
        message = Reading(sensor=r["sensor"], celsius=r["celsius"], count=r["count"], tags=r["tags"])
        key = r["sensor"].encode()
        producer.produce(
            "readings-proto-py", key=key, value=proto(message, SerializationContext("readings-proto-py", MessageField.VALUE))
        )
        producer.produce(
            "readings-json-py", key=key, value=as_json(r, SerializationContext("readings-json-py", MessageField.VALUE))
        )
        producer.poll(0)
    if producer.flush(60) != 0:
        sys.exit("records not delivered")
    print(json.dumps({"hits": hits, "readings": sent}))


def consume(bootstrap, url, auth, topic, form, count):
    client = registry(url, auth)
    if form == "avro":
        decode = AvroDeserializer(client)
    elif form == "protobuf":
        Reading = reading_class()
        proto = ProtobufDeserializer(Reading, {"use.deprecated.format": False})

        def decode(value, ctx):
            message = proto(value, ctx)
            return {"sensor": message.sensor, "celsius": message.celsius, "count": message.count, "tags": list(message.tags)}
    else:
        decode = JSONDeserializer(READING_JSON_SCHEMA, schema_registry_client=client)
    consumer = Consumer({
        "bootstrap.servers": bootstrap,
        "group.id": f"interop-{topic}",
        "auto.offset.reset": "earliest",
        "enable.auto.commit": False,
    })
    consumer.subscribe([topic])
    out = []
    idle = 0
    while len(out) < count and idle < 60:
        message = consumer.poll(1.0)
        if message is None:
            idle += 1
            continue
        if message.error():
            sys.exit(f"{topic}: {message.error()}")
        idle = 0
        key = message.key().decode() if message.key() is not None else None
        value = decode(message.value(), SerializationContext(topic, MessageField.VALUE))
        out.append([key, value])
    consumer.close()
    print(json.dumps(out))


if __name__ == "__main__":
    command, args = sys.argv[1], sys.argv[2:]
    if command == "produce":
        produce(args[0], args[1], args[2], int(args[3]))
    else:
        consume(args[0], args[1], args[2], args[3], args[4], int(args[5]))
