"""Read a SAM template into what the API Gateway emulator serves.

It finds the WebSocket API (``AWS::ApiGatewayV2::Api`` with ``ProtocolType:
WEBSOCKET``), its routes, integrations, REQUEST authorizer and stage, and the
``HttpApi`` events of ``AWS::Serverless::Function`` resources, and resolves each
to the function that serves it: ``CodeUri``, ``Handler``, ``Environment``,
``Layers`` and ``Timeout``, with ``Globals`` applied.

Integration and authorizer URIs are matched to functions by the logical ids
they reference (``${ConnectFunction.Arn}``, ``!GetAtt X.Arn``, ``!Ref X``),
not by parsing ARNs, so any of the usual spellings works.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

FUNCTION_TYPES = frozenset({"AWS::Serverless::Function", "AWS::Lambda::Function"})
PSEUDO_PARAMETERS = {
    "AWS::Region": "us-east-1",
    "AWS::AccountId": "123456789012",
    "AWS::StackName": "local",
    "AWS::StackId": "arn:aws:cloudformation:us-east-1:123456789012:stack/local/0",
    "AWS::Partition": "aws",
    "AWS::URLSuffix": "amazonaws.com",
    "AWS::NoValue": None,
}
_SUB_VARIABLE = re.compile(r"\$\{([^}!][^}]*)\}")


class TemplateError(Exception):
    """The template cannot be served (no WebSocket API, a route without a function, ...)."""


class _CfnLoader(yaml.SafeLoader):
    """YAML with CloudFormation's short-form tags (``!Ref``, ``!Sub``, ``!GetAtt`` ...)."""


def _construct_tag(loader: _CfnLoader, tag_suffix: str, node: yaml.Node) -> dict[str, Any]:
    value: Any
    if isinstance(node, yaml.ScalarNode):
        value = loader.construct_scalar(node)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)  # type: ignore[arg-type]
    if tag_suffix == "Ref":
        return {"Ref": value}
    if tag_suffix == "Condition":
        return {"Condition": value}
    if tag_suffix == "GetAtt" and isinstance(value, str):
        value = value.split(".", 1)
    return {f"Fn::{tag_suffix}": value}


_CfnLoader.add_multi_constructor("!", _construct_tag)


def load_template(path: Path) -> dict[str, Any]:
    text = path.read_text("utf-8")
    if text.lstrip().startswith("{"):
        loaded: dict[str, Any] = json.loads(text)
        return loaded
    loaded = yaml.load(text, Loader=_CfnLoader)  # noqa: S506 - SafeLoader plus CFN tags
    if not isinstance(loaded, dict):
        raise TemplateError(f"{path} is not a CloudFormation template")
    return loaded


@dataclass(frozen=True)
class FunctionSpec:
    logical_id: str
    code_uri: Path
    handler: str
    runtime: str
    environment: dict[str, str]
    layers: tuple[Path, ...] = ()
    timeout_s: float = 3.0
    memory_mb: int = 128


@dataclass(frozen=True)
class AuthorizerSpec:
    function: FunctionSpec
    identity_sources: tuple[str, ...]  # e.g. route.request.querystring.token


@dataclass(frozen=True)
class RouteSpec:
    route_key: str
    function: FunctionSpec
    returns_response: bool = False  # RouteResponseSelectionExpression set: body goes back


@dataclass(frozen=True)
class WebSocketApiSpec:
    logical_id: str
    stage: str
    route_selection_expression: str
    routes: dict[str, RouteSpec]
    authorizer: AuthorizerSpec | None = None


@dataclass(frozen=True)
class HttpRouteSpec:
    method: str  # upper case, or ANY
    path: str  # /runs/{runId}, /{proxy+}, or $default
    function: FunctionSpec

    @property
    def route_key(self) -> str:
        return "$default" if self.path == "$default" else f"{self.method} {self.path}"


@dataclass(frozen=True)
class ApiSpec:
    websocket: WebSocketApiSpec | None
    http_routes: tuple[HttpRouteSpec, ...]
    functions: dict[str, FunctionSpec] = field(default_factory=dict)


class _Resolver:
    """Evaluates the intrinsic functions a local run needs, with stand-in values
    for what only a deployment knows (a resource's name is its logical id)."""

    def __init__(self, template: dict[str, Any], parameters: dict[str, str]) -> None:
        self.resources: dict[str, Any] = template.get("Resources") or {}
        self.conditions: dict[str, Any] = template.get("Conditions") or {}
        self.parameters: dict[str, Any] = dict(PSEUDO_PARAMETERS)
        for name, spec in (template.get("Parameters") or {}).items():
            self.parameters[name] = spec.get("Default", "")
        self.parameters.update(parameters)

    def arn(self, logical_id: str) -> str:
        kind = self.resources.get(logical_id, {}).get("Type", "")
        service = kind.split("::")[1].lower() if "::" in kind else "local"
        return f"arn:aws:{service}:us-east-1:123456789012:{logical_id}"

    def attribute(self, logical_id: str, name: str) -> str:
        if name in ("Arn", "StreamArn"):
            return self.arn(logical_id)
        return logical_id

    def ref(self, name: str) -> Any:  # noqa: ANN401 - a parameter may be any value
        if name in self.parameters:
            return self.parameters[name]
        return name  # a resource: its physical name stands in as the logical id

    def condition(self, name: str) -> bool:
        return bool(self.resolve(self.conditions.get(name, True)))

    def substitute(self, text: str, variables: dict[str, Any]) -> str:
        def replace(match: re.Match[str]) -> str:
            name = match.group(1)
            if name in variables:
                return str(self.resolve(variables[name]))
            if "." in name and not name.startswith("AWS::"):
                logical_id, attribute = name.split(".", 1)
                return self.attribute(logical_id, attribute)
            return str(self.ref(name))

        return _SUB_VARIABLE.sub(replace, text).replace("${!", "${")

    def resolve(self, value: Any) -> Any:  # noqa: ANN401, PLR0911, PLR0912 - one case per intrinsic
        if isinstance(value, list):
            return [self.resolve(item) for item in value]
        if not isinstance(value, dict):
            return value
        if len(value) != 1:
            return {key: self.resolve(item) for key, item in value.items()}
        ((key, argument),) = value.items()
        match key:
            case "Ref":
                return self.ref(argument)
            case "Fn::GetAtt":
                return self.attribute(*self.resolve(argument)[:2])
            case "Fn::Sub":
                text, variables = (argument, {}) if isinstance(argument, str) else argument
                return self.substitute(text, variables)
            case "Fn::Join":
                separator, parts = argument
                return str(separator).join(str(p) for p in self.resolve(parts))
            case "Fn::Select":
                index, items = self.resolve(argument)
                return items[int(index)]
            case "Fn::Split":
                separator, text = self.resolve(argument)
                return str(text).split(separator)
            case "Fn::If":
                name, when_true, when_false = argument
                return self.resolve(when_true if self.condition(name) else when_false)
            case "Fn::Equals":
                left, right = self.resolve(argument)
                return str(left) == str(right)
            case "Fn::Not":
                return not self.resolve(argument[0])
            case "Fn::And":
                return all(self.resolve(item) for item in argument)
            case "Fn::Or":
                return any(self.resolve(item) for item in argument)
            case "Condition":
                return self.condition(argument)
        return {key: self.resolve(argument)}


def _referenced_ids(value: Any) -> Iterator[str]:  # noqa: ANN401
    """Logical ids a value mentions through Ref, GetAtt or ${...} in Sub."""
    if isinstance(value, list):
        for item in value:
            yield from _referenced_ids(item)
    elif isinstance(value, dict):
        for key, argument in value.items():
            if key == "Ref" and isinstance(argument, str):
                yield argument
            elif key == "Fn::GetAtt":
                target = argument.split(".")[0] if isinstance(argument, str) else argument[0]
                yield str(target)
            elif key == "Fn::Sub":
                text = argument if isinstance(argument, str) else argument[0]
                for name in _SUB_VARIABLE.findall(text):
                    yield name.split(".")[0]
                if not isinstance(argument, str):
                    yield from _referenced_ids(argument[1])
            else:
                yield from _referenced_ids(argument)


class TemplateReader:
    def __init__(
        self,
        path: Path,
        parameters: dict[str, str] | None = None,
        env_vars: dict[str, dict[str, str]] | None = None,
    ) -> None:
        self.path = path.resolve()
        self.root = self.path.parent
        self.template = load_template(self.path)
        self.resources: dict[str, Any] = self.template.get("Resources") or {}
        self.resolver = _Resolver(self.template, parameters or {})
        # SAM's --env-vars format: {"Parameters": {...}, "<FunctionLogicalId>": {...}}
        self.env_vars = env_vars or {}
        self._functions: dict[str, FunctionSpec] = {}

    def _of_type(self, *types: str) -> dict[str, dict[str, Any]]:
        return {
            logical_id: resource
            for logical_id, resource in self.resources.items()
            if resource.get("Type") in types
        }

    def _properties(self, logical_id: str) -> dict[str, Any]:
        properties: dict[str, Any] = self.resources[logical_id].get("Properties") or {}
        return properties

    def function(self, logical_id: str) -> FunctionSpec:
        if logical_id in self._functions:
            return self._functions[logical_id]
        resource = self.resources.get(logical_id)
        if resource is None or resource.get("Type") not in FUNCTION_TYPES:
            raise TemplateError(f"{logical_id} is not a Lambda function of this template")
        globals_ = (self.template.get("Globals") or {}).get("Function") or {}
        own = self._properties(logical_id)
        properties = {**globals_, **own}
        # SAM adds a function's Layers to the global ones (lists are additive).
        properties["Layers"] = [*(globals_.get("Layers") or []), *(own.get("Layers") or [])]
        runtime = str(self.resolver.resolve(properties.get("Runtime", "")))
        if not runtime.startswith("python"):
            raise TemplateError(f"{logical_id}: runtime {runtime!r} is not served (python only)")
        code_uri = properties.get("CodeUri", ".")
        if not isinstance(code_uri, str):
            raise TemplateError(f"{logical_id}: CodeUri must be a local path")
        environment = {
            **((globals_.get("Environment") or {}).get("Variables") or {}),
            **((self._properties(logical_id).get("Environment") or {}).get("Variables") or {}),
        }
        resolved_env = {
            name: "" if value is None else str(value)
            for name, value in self.resolver.resolve(environment).items()
        }
        for scope in ("Parameters", logical_id):
            overrides = self.env_vars.get(scope) or {}
            resolved_env.update(
                {
                    k: str(v)
                    for k, v in overrides.items()
                    if scope == logical_id or k in resolved_env
                }
            )
        spec = FunctionSpec(
            logical_id=logical_id,
            code_uri=(self.root / code_uri).resolve(),
            handler=str(properties.get("Handler", "")),
            runtime=runtime,
            environment=resolved_env,
            layers=tuple(self._layer_paths(properties.get("Layers") or [])),
            timeout_s=float(self.resolver.resolve(properties.get("Timeout", 3))),
            memory_mb=int(self.resolver.resolve(properties.get("MemorySize", 128))),
        )
        self._functions[logical_id] = spec
        return spec

    def _layer_paths(self, layers: list[Any]) -> Iterator[Path]:
        for layer in layers:
            for logical_id in _referenced_ids(layer):
                resource = self.resources.get(logical_id, {})
                if resource.get("Type") == "AWS::Serverless::LayerVersion":
                    yield (self.root / self._properties(logical_id)["ContentUri"]).resolve()
                elif resource.get("Type") == "AWS::Lambda::LayerVersion":
                    content = self._properties(logical_id).get("Content")
                    if isinstance(content, str):
                        yield (self.root / content).resolve()

    def _function_referenced_by(self, value: Any, what: str) -> FunctionSpec:  # noqa: ANN401
        ids = {
            i
            for i in _referenced_ids(value)
            if self.resources.get(i, {}).get("Type") in FUNCTION_TYPES
        }
        if len(ids) != 1:
            raise TemplateError(
                f"{what}: expected one Lambda function, found {sorted(ids) or 'none'}"
            )
        return self.function(ids.pop())

    def websocket_api(self, stage: str | None = None) -> WebSocketApiSpec | None:
        apis = {
            logical_id: resource
            for logical_id, resource in self._of_type("AWS::ApiGatewayV2::Api").items()
            if (resource.get("Properties") or {}).get("ProtocolType") == "WEBSOCKET"
        }
        if not apis:
            return None
        if len(apis) > 1:
            raise TemplateError(f"several WebSocket APIs ({sorted(apis)}): one is served")
        api_id = next(iter(apis))

        def belongs(properties: dict[str, Any]) -> bool:
            return api_id in set(_referenced_ids(properties.get("ApiId")))

        integrations = {
            logical_id: self._function_referenced_by(
                self._properties(logical_id).get("IntegrationUri"), logical_id
            )
            for logical_id in self._of_type("AWS::ApiGatewayV2::Integration")
            if belongs(self._properties(logical_id))
        }
        authorizer = None
        for logical_id in self._of_type("AWS::ApiGatewayV2::Authorizer"):
            properties = self._properties(logical_id)
            if belongs(properties) and properties.get("AuthorizerType") == "REQUEST":
                authorizer = AuthorizerSpec(
                    function=self._function_referenced_by(
                        properties.get("AuthorizerUri"), logical_id
                    ),
                    identity_sources=tuple(
                        self.resolver.resolve(properties.get("IdentitySource") or [])
                    ),
                )
        routes: dict[str, RouteSpec] = {}
        for logical_id in self._of_type("AWS::ApiGatewayV2::Route"):
            properties = self._properties(logical_id)
            if not belongs(properties):
                continue
            targets = [i for i in _referenced_ids(properties.get("Target")) if i in integrations]
            if len(targets) != 1:
                raise TemplateError(f"{logical_id}: its Target names no integration of this API")
            route_key = str(self.resolver.resolve(properties["RouteKey"]))
            routes[route_key] = RouteSpec(
                route_key=route_key,
                function=integrations[targets[0]],
                returns_response=bool(properties.get("RouteResponseSelectionExpression")),
            )
        stages = [
            str(self.resolver.resolve(self._properties(i)["StageName"]))
            for i in self._of_type("AWS::ApiGatewayV2::Stage")
            if belongs(self._properties(i))
        ]
        api_properties = self._properties(api_id)
        return WebSocketApiSpec(
            logical_id=api_id,
            stage=stage or (stages[0] if stages else "local"),
            route_selection_expression=str(
                api_properties.get("RouteSelectionExpression", "$request.body.action")
            ),
            routes=routes,
            authorizer=authorizer,
        )

    def http_routes(self) -> tuple[HttpRouteSpec, ...]:
        routes = []
        for logical_id in self._of_type("AWS::Serverless::Function"):
            for event in (self._properties(logical_id).get("Events") or {}).values():
                if event.get("Type") != "HttpApi":
                    continue
                properties = event.get("Properties") or {}
                path = str(self.resolver.resolve(properties.get("Path", "$default")))
                method = str(self.resolver.resolve(properties.get("Method", "ANY"))).upper()
                routes.append(
                    HttpRouteSpec(
                        method="ANY" if method == "X-AMAZON-APIGATEWAY-ANY-METHOD" else method,
                        path=path,
                        function=self.function(logical_id),
                    )
                )
        return tuple(routes)

    def api(self, stage: str | None = None) -> ApiSpec:
        websocket = self.websocket_api(stage)
        http_routes = self.http_routes()
        if websocket is None and not http_routes:
            raise TemplateError(f"{self.path}: no WebSocket API and no HttpApi events to serve")
        return ApiSpec(
            websocket=websocket, http_routes=http_routes, functions=dict(self._functions)
        )
