"""The local AWS of the local stack and the tests: moto in server mode on 127.0.0.1,
holding the data stores that ``template.yaml`` declares, built from the template's
own resource properties so that local and deployed cannot drift.

Every ``AWS::DynamoDB::Table``, ``AWS::SQS::Queue``, ``AWS::S3::Bucket`` and
``AWS::SecretsManager::Secret`` of the template is created, named by its logical
id (the name the API Gateway emulator's resolver gives ``!Ref``). Properties
that only mean something on AWS are left out: tags, KMS keys, bucket policies
(the local endpoint is plain HTTP, so a TLS-only policy would deny everything).

Creating is idempotent: what already exists (same key schema, same queue
attributes) is kept, secrets keep their value; a resource that exists with a
different shape raises :class:`LocalAwsError`. Each server is a process of its
own, with its own state.

    aws = start_local_aws(Path("template.yaml"))
    boto3.client("sqs", endpoint_url=aws.endpoint_url, **aws.client_kwargs())
    aws.stop()
"""

from __future__ import annotations

import dataclasses
import io
import json
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Self

import boto3
from botocore.exceptions import ClientError

from hatchway.observability import logger
from hatchway_local.apigw_emulator.template import PSEUDO_PARAMETERS, TemplateReader

# The resolver's stand-ins for the pseudo parameters are moto's defaults too, so an
# ARN the template builds (``!GetAtt Queue.Arn``) is the ARN moto gives the resource.
REGION = str(PSEUDO_PARAMETERS["AWS::Region"])
CREDENTIALS = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}

TABLE = "AWS::DynamoDB::Table"
QUEUE = "AWS::SQS::Queue"
BUCKET = "AWS::S3::Bucket"
SECRET = "AWS::SecretsManager::Secret"  # noqa: S105 - a resource type, not a password

# AWS::SQS::Queue properties that are queue attributes (the rest: QueueName, Tags).
_QUEUE_ATTRIBUTES = (
    "ContentBasedDeduplication",
    "DeduplicationScope",
    "DelaySeconds",
    "FifoQueue",
    "FifoThroughputLimit",
    "KmsDataKeyReusePeriodSeconds",
    "MaximumMessageSize",
    "MessageRetentionPeriod",
    "ReceiveMessageWaitTimeSeconds",
    "RedriveAllowPolicy",
    "RedrivePolicy",
    "SqsManagedSseEnabled",
    "VisibilityTimeout",
)
# GenerateSecretString properties that GetRandomPassword takes as they are.
_PASSWORD_OPTIONS = (
    "ExcludeCharacters",
    "ExcludeLowercase",
    "ExcludeNumbers",
    "ExcludePunctuation",
    "ExcludeUppercase",
    "IncludeSpace",
    "PasswordLength",
    "RequireEachIncludedType",
)


class LocalAwsError(Exception):
    """The template's resources cannot be created as declared."""


def _error_code(error: ClientError) -> str:
    return str(error.response.get("Error", {}).get("Code", ""))


class MotoServer:
    """moto's server in a child process on ``host``; ``port`` 0 takes a free port.

    A process of its own because moto keeps its state per process: two servers in
    one process (a test session's stack and a test's own) would share every queue
    and table, and one stack's relays would take the other's runs."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.host, self.port = host, port
        self.endpoint_url = ""
        self._process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] = io.BytesIO()

    def start(self, timeout_s: float = 30.0) -> str:
        error = ""
        for _ in range(3):  # a free port can be taken between choosing and binding it
            port = self.port or _free_port(self.host)
            command = [sys.executable, "-m", "moto.server", "-H", self.host, "-p", str(port)]
            # A file, not a pipe: moto logs every request, and nobody reads a pipe.
            self._log = tempfile.TemporaryFile()  # noqa: SIM115 - closed in _stop_process
            self._process = subprocess.Popen(  # noqa: S603 - our own interpreter, fixed arguments
                command, stdout=self._log, stderr=subprocess.STDOUT
            )
            endpoint_url = f"http://{self.host}:{port}"
            if _wait_until_serving(self._process, endpoint_url, timeout_s):
                self.endpoint_url = endpoint_url
                return endpoint_url
            error = self._stop_process()
            if self.port:  # the caller's port: trying again would not help
                break
        raise LocalAwsError(f"moto did not start on {self.host}: {error}")

    def stop(self) -> None:
        self._stop_process()
        self.endpoint_url = ""

    def _stop_process(self) -> str:
        """Stop moto; the last line it logged."""
        process, self._process = self._process, None
        if process is None:
            return ""
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        self._log.seek(0)
        last_lines = self._log.read().decode(errors="replace").strip().splitlines()[-1:]
        self._log.close()
        return last_lines[0] if last_lines else f"exit status {process.returncode}"


def _free_port(host: str) -> int:
    with socket.socket() as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


def _wait_until_serving(
    process: subprocess.Popen[bytes], endpoint_url: str, timeout_s: float
) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return False
        try:
            with urllib.request.urlopen(f"{endpoint_url}/moto-api/data.json", timeout=1):  # noqa: S310 - our own local URL
                return True
        except OSError:
            time.sleep(0.05)
    return False


@dataclass(frozen=True)
class LocalAws:
    """Where the local resources are: names and URLs by the template's logical ids."""

    endpoint_url: str
    tables: Mapping[str, str] = field(default_factory=dict)
    queue_urls: Mapping[str, str] = field(default_factory=dict)
    queue_arns: Mapping[str, str] = field(default_factory=dict)
    buckets: Mapping[str, str] = field(default_factory=dict)
    secret_arns: Mapping[str, str] = field(default_factory=dict)
    region: str = REGION
    server: MotoServer | None = field(default=None, repr=False, compare=False)

    @property
    def table_name(self) -> str:
        """The template's table (Hatchway has one)."""
        if len(self.tables) != 1:
            raise LocalAwsError(f"expected one table, the template has {sorted(self.tables)}")
        return next(iter(self.tables.values()))

    def table(self, logical_id: str) -> str:
        return _named(self.tables, logical_id, "table")

    def queue_url(self, logical_id: str) -> str:
        return _named(self.queue_urls, logical_id, "queue")

    def bucket_name(self, logical_id: str) -> str:
        return _named(self.buckets, logical_id, "bucket")

    def secret_arn(self, logical_id: str) -> str:
        return _named(self.secret_arns, logical_id, "secret")

    def client_kwargs(self) -> dict[str, str]:
        """What a boto3 client needs to reach this endpoint."""
        return {"endpoint_url": self.endpoint_url, "region_name": self.region, **CREDENTIALS}

    def environment(self) -> dict[str, str]:
        """Environment that points every AWS SDK client of a process here."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint_url,
            "AWS_ACCESS_KEY_ID": CREDENTIALS["aws_access_key_id"],
            "AWS_SECRET_ACCESS_KEY": CREDENTIALS["aws_secret_access_key"],
            "AWS_DEFAULT_REGION": self.region,
            "AWS_REGION": self.region,
        }

    def stop(self) -> None:
        """Stop the server this object started (the resources go with the process)."""
        if self.server is not None:
            self.server.stop()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


def _named(names: Mapping[str, str], logical_id: str, kind: str) -> str:
    try:
        return names[logical_id]
    except KeyError:
        raise LocalAwsError(
            f"the template declares no {kind} {logical_id!r} (it has {sorted(names)})"
        ) from None


class _Builder:
    """Creates one template's resources on one endpoint."""

    def __init__(self, endpoint_url: str, reader: TemplateReader) -> None:
        self.reader = reader
        session = boto3.session.Session(region_name=REGION, **CREDENTIALS)
        self.dynamodb = session.client("dynamodb", endpoint_url=endpoint_url)
        self.sqs = session.client("sqs", endpoint_url=endpoint_url)
        self.s3 = session.client("s3", endpoint_url=endpoint_url)
        self.secrets = session.client("secretsmanager", endpoint_url=endpoint_url)

    def properties(self, logical_id: str) -> dict[str, Any]:
        """A resource's properties with intrinsic functions resolved."""
        raw = self.reader.resources[logical_id].get("Properties") or {}
        resolved: dict[str, Any] = self.reader.resolver.resolve(raw)
        return resolved

    def of_type(self, resource_type: str) -> list[str]:
        return [
            logical_id
            for logical_id, resource in self.reader.resources.items()
            if resource.get("Type") == resource_type
        ]

    # -- DynamoDB ----------------------------------------------------------------------

    def table(self, name: str, properties: dict[str, Any]) -> str:
        request = _create_table_request(name, properties)
        try:
            self.dynamodb.create_table(**request)
        except ClientError as error:
            if _error_code(error) != "ResourceInUseException":
                raise
            self._check_existing_table(name, request)
            return name
        ttl = properties.get("TimeToLiveSpecification")
        if ttl and _bool(ttl.get("Enabled")):
            self.dynamodb.update_time_to_live(
                TableName=name,
                TimeToLiveSpecification={"Enabled": True, "AttributeName": ttl["AttributeName"]},
            )
        pitr = properties.get("PointInTimeRecoverySpecification")
        if pitr and _bool(pitr.get("PointInTimeRecoveryEnabled")):
            self.dynamodb.update_continuous_backups(
                TableName=name,
                PointInTimeRecoverySpecification={"PointInTimeRecoveryEnabled": True},
            )
        return name

    def _check_existing_table(self, name: str, request: dict[str, Any]) -> None:
        existing = self.dynamodb.describe_table(TableName=name)["Table"]
        wanted_indexes = {i["IndexName"] for i in request.get("GlobalSecondaryIndexes", [])}
        found_indexes = {i["IndexName"] for i in existing.get("GlobalSecondaryIndexes", [])}
        if existing["KeySchema"] != request["KeySchema"] or wanted_indexes != found_indexes:
            raise LocalAwsError(
                f"table {name} exists with another key schema or other indexes than the "
                "template's; use a fresh moto server"
            )

    # -- SQS ---------------------------------------------------------------------------

    def queues(self) -> tuple[dict[str, str], dict[str, str]]:
        """Every queue, dead-letter targets before the queues that redrive to them."""
        pending = {logical_id: self.properties(logical_id) for logical_id in self.of_type(QUEUE)}
        urls: dict[str, str] = {}
        arns: dict[str, str] = {}
        while pending:
            ready = [
                logical_id
                for logical_id, properties in pending.items()
                if _redrive_target(properties) is None or _redrive_target(properties) in urls
            ]
            if not ready:
                raise LocalAwsError(f"queues redrive to undeclared queues: {sorted(pending)}")
            for logical_id in ready:
                properties = pending.pop(logical_id)
                target = _redrive_target(properties)
                if target is not None:
                    properties["RedrivePolicy"] = {
                        **properties["RedrivePolicy"],
                        "deadLetterTargetArn": arns[target],
                    }
                urls[logical_id], arns[logical_id] = self.queue(logical_id, properties)
        return urls, arns

    def queue(self, logical_id: str, properties: dict[str, Any]) -> tuple[str, str]:
        name = logical_id + (".fifo" if _bool(properties.get("FifoQueue")) else "")
        attributes = {
            key: _attribute(properties[key]) for key in _QUEUE_ATTRIBUTES if key in properties
        }
        try:
            url = str(self.sqs.create_queue(QueueName=name, Attributes=attributes)["QueueUrl"])
        except ClientError as error:
            if "QueueAlreadyExists" not in _error_code(error):
                raise
            raise LocalAwsError(
                f"queue {name} exists with other attributes than the template's"
            ) from error
        arn = self.sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])
        return url, str(arn["Attributes"]["QueueArn"])

    # -- S3 ----------------------------------------------------------------------------

    def bucket(self, name: str, properties: dict[str, Any]) -> str:
        try:
            self.s3.create_bucket(Bucket=name)  # us-east-1: no LocationConstraint
        except ClientError as error:
            if _error_code(error) not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                raise
        if block := properties.get("PublicAccessBlockConfiguration"):
            self.s3.put_public_access_block(
                Bucket=name,
                PublicAccessBlockConfiguration={k: _bool(v) for k, v in block.items()},
            )
        if encryption := properties.get("BucketEncryption"):
            self.s3.put_bucket_encryption(
                Bucket=name,
                ServerSideEncryptionConfiguration={
                    "Rules": [
                        _encryption_rule(r) for r in encryption["ServerSideEncryptionConfiguration"]
                    ]
                },
            )
        if ownership := properties.get("OwnershipControls"):
            self.s3.put_bucket_ownership_controls(Bucket=name, OwnershipControls=ownership)
        if lifecycle := properties.get("LifecycleConfiguration"):
            self.s3.put_bucket_lifecycle_configuration(
                Bucket=name,
                LifecycleConfiguration={"Rules": [_lifecycle_rule(r) for r in lifecycle["Rules"]]},
            )
        if cors := properties.get("CorsConfiguration"):
            self.s3.put_bucket_cors(
                Bucket=name,
                CORSConfiguration={"CORSRules": [_cors_rule(r) for r in cors["CorsRules"]]},
            )
        return name

    # -- Secrets Manager ---------------------------------------------------------------

    def secret(self, name: str, properties: dict[str, Any]) -> str:
        try:
            return str(self.secrets.describe_secret(SecretId=name)["ARN"])  # keep its value
        except ClientError as error:
            if _error_code(error) != "ResourceNotFoundException":
                raise
        request: dict[str, Any] = {"Name": name, "SecretString": self._secret_value(properties)}
        if description := properties.get("Description"):
            request["Description"] = str(description)
        return str(self.secrets.create_secret(**request)["ARN"])

    def _secret_value(self, properties: dict[str, Any]) -> str:
        if "SecretString" in properties:
            return str(properties["SecretString"])
        generate = properties.get("GenerateSecretString") or {}
        options = {key: generate[key] for key in _PASSWORD_OPTIONS if key in generate}
        if "PasswordLength" in options:
            options["PasswordLength"] = int(options["PasswordLength"])
        for key in options.keys() - {"PasswordLength", "ExcludeCharacters"}:
            options[key] = _bool(options[key])
        password = str(self.secrets.get_random_password(**options)["RandomPassword"])
        if template := generate.get("SecretStringTemplate"):
            document = json.loads(template)
            document[generate["GenerateStringKey"]] = password
            return json.dumps(document)
        return password


def _bool(value: Any) -> bool:  # noqa: ANN401 - YAML true or a parameter's "true"
    return value is True or str(value).lower() == "true"


def _attribute(value: Any) -> str:  # noqa: ANN401
    """An SQS attribute value: JSON policies as text, booleans in lower case."""
    if isinstance(value, dict):
        return json.dumps(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _redrive_target(properties: dict[str, Any]) -> str | None:
    """The logical id of the queue this one redrives to (the ARN's last part)."""
    redrive = properties.get("RedrivePolicy")
    if not redrive:
        return None
    if isinstance(redrive, str):
        redrive = json.loads(redrive)
        properties["RedrivePolicy"] = redrive
    return str(redrive["deadLetterTargetArn"]).rsplit(":", 1)[-1]


def _create_table_request(name: str, properties: dict[str, Any]) -> dict[str, Any]:
    def throughput(value: dict[str, Any]) -> dict[str, int]:
        return {key: int(number) for key, number in value.items()}

    def index(spec: dict[str, Any]) -> dict[str, Any]:
        request = {key: spec[key] for key in ("IndexName", "KeySchema", "Projection")}
        if "ProvisionedThroughput" in spec:
            request["ProvisionedThroughput"] = throughput(spec["ProvisionedThroughput"])
        return request

    request: dict[str, Any] = {
        "TableName": name,
        "AttributeDefinitions": properties["AttributeDefinitions"],
        "KeySchema": properties["KeySchema"],
        "BillingMode": properties.get("BillingMode", "PROVISIONED"),
    }
    if "ProvisionedThroughput" in properties:
        request["ProvisionedThroughput"] = throughput(properties["ProvisionedThroughput"])
    for key in ("GlobalSecondaryIndexes", "LocalSecondaryIndexes"):
        if properties.get(key):
            request[key] = [index(spec) for spec in properties[key]]
    if sse := properties.get("SSESpecification"):
        request["SSESpecification"] = {"Enabled": _bool(sse.get("SSEEnabled"))}
    if stream := properties.get("StreamSpecification"):
        request["StreamSpecification"] = {
            "StreamEnabled": True,
            "StreamViewType": stream["StreamViewType"],
        }
    if "TableClass" in properties:
        request["TableClass"] = properties["TableClass"]
    return request


def _lifecycle_rule(rule: dict[str, Any]) -> dict[str, Any]:
    """A CloudFormation lifecycle rule in the S3 API's shape (the common fields)."""
    api: dict[str, Any] = {"ID": rule.get("Id", "rule"), "Status": rule["Status"]}
    api["Filter"] = {"Prefix": rule["Prefix"]} if "Prefix" in rule else {}
    if "ExpirationInDays" in rule:
        api["Expiration"] = {"Days": int(rule["ExpirationInDays"])}
    if abort := rule.get("AbortIncompleteMultipartUpload"):
        api["AbortIncompleteMultipartUpload"] = {
            "DaysAfterInitiation": int(abort["DaysAfterInitiation"])
        }
    return api


def _encryption_rule(rule: dict[str, Any]) -> dict[str, Any]:
    api: dict[str, Any] = {
        "ApplyServerSideEncryptionByDefault": rule["ServerSideEncryptionByDefault"]
    }
    if "BucketKeyEnabled" in rule:
        api["BucketKeyEnabled"] = _bool(rule["BucketKeyEnabled"])
    return api


def _cors_rule(rule: dict[str, Any]) -> dict[str, Any]:
    api: dict[str, Any] = {
        "AllowedMethods": rule["AllowedMethods"],
        "AllowedOrigins": rule["AllowedOrigins"],
    }
    for cfn_key, api_key in (
        ("AllowedHeaders", "AllowedHeaders"),
        ("ExposedHeaders", "ExposeHeaders"),
        ("Id", "ID"),
    ):
        if cfn_key in rule:
            api[api_key] = rule[cfn_key]
    if "MaxAge" in rule:
        api["MaxAgeSeconds"] = int(rule["MaxAge"])
    return api


def create_resources(
    endpoint_url: str, template: Path, parameters: Mapping[str, str] | None = None
) -> LocalAws:
    """Create ``template``'s tables, queues, buckets and secrets at ``endpoint_url``."""
    reader = TemplateReader(template, dict(parameters or {}))
    builder = _Builder(endpoint_url, reader)
    tables = {i: builder.table(i, builder.properties(i)) for i in builder.of_type(TABLE)}
    queue_urls, queue_arns = builder.queues()
    buckets = {i: builder.bucket(i, builder.properties(i)) for i in builder.of_type(BUCKET)}
    secrets = {i: builder.secret(i, builder.properties(i)) for i in builder.of_type(SECRET)}
    aws = LocalAws(
        endpoint_url=endpoint_url,
        tables=tables,
        queue_urls=queue_urls,
        queue_arns=queue_arns,
        buckets=buckets,
        secret_arns=secrets,
    )
    logger.info(
        "local AWS resources ready",
        endpoint_url=endpoint_url,
        tables=sorted(tables),
        queues=sorted(queue_urls),
        buckets=sorted(buckets),
        secrets=sorted(secrets),
    )
    return aws


def start_local_aws(
    template: Path,
    port: int = 0,
    parameters: Mapping[str, str] | None = None,
    host: str = "127.0.0.1",
) -> LocalAws:
    """Start moto on ``host:port`` (0: a free port) with the template's resources;
    ``stop()`` (or leaving a ``with`` block) stops it."""
    server = MotoServer(host, port)
    endpoint_url = server.start()
    try:
        aws = create_resources(endpoint_url, template, parameters)
    except BaseException:
        server.stop()
        raise
    return dataclasses.replace(aws, server=server)
