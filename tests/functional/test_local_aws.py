"""hatchway_local.aws: moto in server mode with template.yaml's own data stores,
reached by real boto3 clients over HTTP on 127.0.0.1."""

from __future__ import annotations

import json
import socket
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest

from hatchway_local.apigw_emulator.template import TemplateReader, load_template
from hatchway_local.aws import (
    LocalAws,
    LocalAwsError,
    MotoServer,
    create_resources,
    start_local_aws,
)
from tests.conftest import REPO_ROOT

pytestmark = pytest.mark.functional

TEMPLATE = REPO_ROOT / "template.yaml"


@pytest.fixture(scope="module")
def aws() -> Iterator[LocalAws]:
    local = start_local_aws(TEMPLATE)
    try:
        yield local
    finally:
        local.stop()


def client(aws: LocalAws, service: str) -> Any:
    return boto3.client(service, **aws.client_kwargs())


def write_template(path: Path, text: str) -> Path:
    if not text.startswith("{"):
        text = 'AWSTemplateFormatVersion: "2010-09-09"\n' + text
    path.write_text(text, "utf-8")
    return path


def test_server_listens_on_loopback(aws: LocalAws) -> None:
    assert aws.endpoint_url.startswith("http://127.0.0.1:")
    with urllib.request.urlopen(f"{aws.endpoint_url}/moto-api/") as response:  # noqa: S310
        assert response.status == 200


def test_resources_are_named_by_logical_id(aws: LocalAws) -> None:
    assert aws.tables == {"HatchwayTable": "HatchwayTable"}
    assert aws.table_name == "HatchwayTable"
    assert set(aws.queue_urls) == {"RunQueue", "RunDeadLetterQueue"}
    assert aws.queue_url("RunQueue").endswith("/RunQueue")
    assert aws.bucket_name("PayloadBucket") == "PayloadBucket"
    assert ":secret:TokenSigningSecret-" in aws.secret_arn("TokenSigningSecret")
    with pytest.raises(LocalAwsError, match="no queue 'Nope'"):
        aws.queue_url("Nope")


def test_lambdas_see_the_same_names_as_local_aws(aws: LocalAws) -> None:
    """The emulator resolves !Ref to the logical id; the resources carry exactly that name."""
    functions = TemplateReader(TEMPLATE).api().functions
    assert functions["TriggerFunction"].environment["TABLE_NAME"] == aws.table_name
    assert functions["TriggerFunction"].environment["TOKEN_SECRET_ARN"] in aws.secret_arns
    assert functions["TriggerFunction"].environment["RUN_QUEUE_URL"] in aws.queue_urls


def test_table_as_declared(aws: LocalAws) -> None:
    dynamodb = client(aws, "dynamodb")
    table = dynamodb.describe_table(TableName=aws.table_name)["Table"]
    assert table["KeySchema"] == [
        {"AttributeName": "pk", "KeyType": "HASH"},
        {"AttributeName": "sk", "KeyType": "RANGE"},
    ]
    assert table["BillingModeSummary"]["BillingMode"] == "PAY_PER_REQUEST"
    indexes = {i["IndexName"]: i for i in table["GlobalSecondaryIndexes"]}
    assert set(indexes) == {"byConnection", "byOwner"}
    assert indexes["byOwner"]["KeySchema"][0] == {"AttributeName": "owner", "KeyType": "HASH"}
    ttl = dynamodb.describe_time_to_live(TableName=aws.table_name)["TimeToLiveDescription"]
    assert ttl == {"TimeToLiveStatus": "ENABLED", "AttributeName": "expiresAt"}
    backups = dynamodb.describe_continuous_backups(TableName=aws.table_name)
    pitr = backups["ContinuousBackupsDescription"]["PointInTimeRecoveryDescription"]
    assert pitr["PointInTimeRecoveryStatus"] == "ENABLED"


def test_table_write_read_and_query_both_indexes(aws: LocalAws) -> None:
    table = boto3.resource("dynamodb", **aws.client_kwargs()).Table(aws.table_name)
    run_id, connection_id, owner = (uuid.uuid4().hex for _ in range(3))
    expires = int(time.time()) + 3600
    table.put_item(Item={"pk": f"RUN#{run_id}", "sk": "META", "expiresAt": expires})
    table.put_item(
        Item={
            "pk": f"RUN#{run_id}",
            "sk": f"SUB#{connection_id}",
            "gsi1pk": f"CONN#{connection_id}",
            "owner": owner,
            "gsi2sk": f"{int(time.time() * 1000):015d}#{run_id}#{connection_id}",
            "after": 0,
            "expiresAt": expires,
        }
    )
    run = table.get_item(Key={"pk": f"RUN#{run_id}", "sk": "META"}, ConsistentRead=True)
    assert run["Item"]["expiresAt"] == expires
    by_connection = table.query(
        IndexName="byConnection",
        KeyConditionExpression="gsi1pk = :c",
        ExpressionAttributeValues={":c": f"CONN#{connection_id}"},
    )["Items"]
    assert [(i["pk"], i["sk"]) for i in by_connection] == [
        (f"RUN#{run_id}", f"SUB#{connection_id}")
    ]
    by_owner = table.query(
        IndexName="byOwner",
        KeyConditionExpression="#o = :o AND gsi2sk > :since",
        ExpressionAttributeNames={"#o": "owner"},
        ExpressionAttributeValues={":o": owner, ":since": "0"},
    )["Items"]
    assert [i["sk"] for i in by_owner] == [f"SUB#{connection_id}"]


def test_queue_as_declared(aws: LocalAws) -> None:
    sqs = client(aws, "sqs")
    url = aws.queue_url("RunQueue")
    attributes = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
    assert attributes["VisibilityTimeout"] == "60"
    assert attributes["SqsManagedSseEnabled"] == "true"
    assert json.loads(attributes["RedrivePolicy"]) == {
        "deadLetterTargetArn": aws.queue_arns["RunDeadLetterQueue"],
        "maxReceiveCount": 5,
    }


def test_queue_send_receive_and_redrive(aws: LocalAws, tmp_path: Path) -> None:
    """On a copy of the template's two queues, so the server's own RunQueue stays
    as the template made it for the other tests of this module."""
    resources = load_template(TEMPLATE)["Resources"]
    copy = {"Resources": {q: resources[q] for q in ("RunQueue", "RunDeadLetterQueue")}}
    text = json.dumps(copy).replace('"RunQueue"', '"CopyRunQueue"')
    text = text.replace('"RunDeadLetterQueue"', '"CopyRunDeadLetterQueue"')
    queues = create_resources(aws.endpoint_url, write_template(tmp_path / "q.json", text))
    url, dead_url = queues.queue_url("CopyRunQueue"), queues.queue_url("CopyRunDeadLetterQueue")
    sqs = client(aws, "sqs")
    attributes = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
    assert attributes["VisibilityTimeout"] == "60"

    body = f'{{"runId": "{uuid.uuid4().hex}"}}'
    sqs.send_message(QueueUrl=url, MessageBody=body)
    # Received and given back five times (maxReceiveCount), it moves to the dead letters.
    for _ in range(5):
        (message,) = sqs.receive_message(QueueUrl=url, WaitTimeSeconds=1)["Messages"]
        assert message["Body"] == body
        sqs.change_message_visibility(
            QueueUrl=url, ReceiptHandle=message["ReceiptHandle"], VisibilityTimeout=0
        )
    assert "Messages" not in sqs.receive_message(QueueUrl=url, WaitTimeSeconds=0)
    (message,) = sqs.receive_message(QueueUrl=dead_url, WaitTimeSeconds=1)["Messages"]
    assert message["Body"] == body
    sqs.delete_message(QueueUrl=dead_url, ReceiptHandle=message["ReceiptHandle"])


def test_bucket_put_get_presigned_and_private(aws: LocalAws) -> None:
    s3 = client(aws, "s3")
    bucket = aws.bucket_name("PayloadBucket")
    key = f"runs/{uuid.uuid4().hex}/chunk-1"
    s3.put_object(Bucket=bucket, Key=key, Body=b"x" * 300_000)
    assert s3.get_object(Bucket=bucket, Key=key)["Body"].read() == b"x" * 300_000
    url = s3.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": key})
    with urllib.request.urlopen(url) as response:  # noqa: S310 - our own endpoint
        assert len(response.read()) == 300_000
    block = s3.get_public_access_block(Bucket=bucket)["PublicAccessBlockConfiguration"]
    assert block == dict.fromkeys(
        ("BlockPublicAcls", "IgnorePublicAcls", "BlockPublicPolicy", "RestrictPublicBuckets"),
        True,
    )
    encryption = s3.get_bucket_encryption(Bucket=bucket)["ServerSideEncryptionConfiguration"]
    rule = encryption["Rules"][0]["ApplyServerSideEncryptionByDefault"]
    assert rule["SSEAlgorithm"] == "AES256"
    (lifecycle,) = s3.get_bucket_lifecycle_configuration(Bucket=bucket)["Rules"]
    assert lifecycle["Expiration"] == {"Days": 1}  # FrameRetentionDays' default


def test_token_secret_is_generated_as_declared(aws: LocalAws) -> None:
    secrets = client(aws, "secretsmanager")
    value = secrets.get_secret_value(SecretId=aws.secret_arn("TokenSigningSecret"))
    key = value["SecretString"]
    assert len(key) == 64
    assert key.isalnum()  # ExcludePunctuation
    # The Lambdas name it by logical id (TOKEN_SECRET_ARN locally): that works too.
    by_name = secrets.get_secret_value(SecretId="TokenSigningSecret")["SecretString"]
    assert by_name == key


def test_creating_again_is_idempotent(aws: LocalAws) -> None:
    secrets = client(aws, "secretsmanager")
    key = secrets.get_secret_value(SecretId="TokenSigningSecret")["SecretString"]
    again = create_resources(aws.endpoint_url, TEMPLATE)
    assert again == aws  # same names, URLs and ARNs (the server handle is not compared)
    assert again.server is None
    assert secrets.get_secret_value(SecretId="TokenSigningSecret")["SecretString"] == key


def test_a_resource_of_another_shape_is_a_clear_error(aws: LocalAws, tmp_path: Path) -> None:
    def queue(seconds: int) -> Path:
        return write_template(
            tmp_path / f"queue-{seconds}.yaml",
            "Resources:\n  ShapeQueue:\n    Type: AWS::SQS::Queue\n"
            f"    Properties:\n      VisibilityTimeout: {seconds}\n",
        )

    def table(key: str) -> Path:
        return write_template(
            tmp_path / f"table-{key}.yaml",
            "Resources:\n  ShapeTable:\n    Type: AWS::DynamoDB::Table\n    Properties:\n"
            "      BillingMode: PAY_PER_REQUEST\n"
            f"      AttributeDefinitions: [{{AttributeName: {key}, AttributeType: S}}]\n"
            f"      KeySchema: [{{AttributeName: {key}, KeyType: HASH}}]\n",
        )

    create_resources(aws.endpoint_url, queue(30))
    with pytest.raises(LocalAwsError, match="queue ShapeQueue exists with other attributes"):
        create_resources(aws.endpoint_url, queue(45))
    create_resources(aws.endpoint_url, table("id"))
    with pytest.raises(LocalAwsError, match="table ShapeTable exists with another key schema"):
        create_resources(aws.endpoint_url, table("pk"))


def test_parameters_and_other_templates(aws: LocalAws, tmp_path: Path) -> None:
    """Any template's stores: parameter overrides reach the properties."""
    template = write_template(
        tmp_path / "other.yaml",
        "Parameters:\n  Days:\n    Type: Number\n    Default: 1\n"
        "Resources:\n"
        "  OtherBucket:\n    Type: AWS::S3::Bucket\n    Properties:\n"
        "      LifecycleConfiguration:\n        Rules:\n"
        "          - {Id: expire, Status: Enabled, ExpirationInDays: !Ref Days}\n"
        "  OtherSecret:\n    Type: AWS::SecretsManager::Secret\n    Properties:\n"
        "      GenerateSecretString:\n"
        '        SecretStringTemplate: \'{"user": "hatchway"}\'\n'
        "        GenerateStringKey: password\n"
        "        PasswordLength: 20\n",
    )
    other = create_resources(aws.endpoint_url, template, {"Days": "3"})
    assert other.buckets == {"OtherBucket": "OtherBucket"}
    assert other.tables == {}
    with pytest.raises(LocalAwsError, match="expected one table"):
        _ = other.table_name
    rules = client(aws, "s3").get_bucket_lifecycle_configuration(Bucket="OtherBucket")["Rules"]
    assert rules[0]["Expiration"] == {"Days": 3}
    secret = client(aws, "secretsmanager").get_secret_value(
        SecretId=other.secret_arn("OtherSecret")
    )
    assert secret["SecretString"].startswith('{"user": "hatchway", "password": "')


def test_a_given_port_and_stop(tmp_path: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    template = write_template(
        tmp_path / "queue.yaml", "Resources:\n  PortQueue:\n    Type: AWS::SQS::Queue\n"
    )
    with start_local_aws(template, port=port) as local:
        assert local.endpoint_url == f"http://127.0.0.1:{port}"
        assert local.environment()["AWS_ENDPOINT_URL"] == local.endpoint_url
        client(local, "sqs").get_queue_url(QueueName="PortQueue")
    with socket.socket() as again:  # the port is free once stopped
        again.bind(("127.0.0.1", port))


def test_server_stop_is_idempotent() -> None:
    server = MotoServer()
    url = server.start()
    assert url.startswith("http://127.0.0.1:")
    server.stop()
    server.stop()


def test_two_servers_keep_their_own_state(aws: LocalAws) -> None:
    """A test's own local AWS must not share queues with a session's stack, whose
    relays would otherwise take the test's runs."""
    with start_local_aws(TEMPLATE) as other:
        assert other.queue_url("RunQueue") != aws.queue_url("RunQueue")
        body = f'{{"runId": "{uuid.uuid4().hex}"}}'
        client(other, "sqs").send_message(QueueUrl=other.queue_url("RunQueue"), MessageBody=body)
        mine = client(aws, "sqs").receive_message(
            QueueUrl=aws.queue_url("RunQueue"), MaxNumberOfMessages=10, WaitTimeSeconds=0
        )
        assert body not in [message["Body"] for message in mine.get("Messages", [])]


def test_a_port_in_use_is_a_clear_error() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(LocalAwsError, match="moto did not start"):
            MotoServer(port=taken.getsockname()[1]).start(timeout_s=10)
