"""Run the real Pulumi program under `pulumi.runtime.set_mocks`, one isolated run per call.

There is no Azure account and no Pulumi CLI here. The mocks stand in for the engine: they record
every resource the program registers (type, name, inputs, provider) and fill in the output-only
properties Azure would return (ids, host names, client ids, the OIDC issuer), and they answer the
few provider functions the program calls (`getClientConfig`, `listManagedClusterUserCredentials`,
`listRedisKeys`).

Each run gets a fresh `contextvars.Context` (Pulumi keeps its settings, config and root stack in
context variables), its own event loop, and an executor whose threads get their own loops that are
closed afterwards, so runs for `dev` and `prod` cannot see each other's state.
"""

from __future__ import annotations

import asyncio
import base64
import contextvars
import json
import runpy
import uuid
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pulumi
import pulumi.runtime
import yaml
from pulumi.runtime import rpc
from pulumi.runtime.mocks import MockMonitor
from pulumi.runtime.stack import run_pulumi_func

from agentplane_infra import program

REPO = Path(__file__).resolve().parents[2]
PROJECT = "agentplane"
SUBSCRIPTION = "00000000-0000-0000-0000-000000000001"
TENANT = "00000000-0000-0000-0000-0000000000aa"
ISSUER = "https://westeurope.oic.prod-aks.azure.com/tenant/issuer/"
SECRET_PLACEHOLDER = "mock-secret-value"

# What `pulumi.Output.secret` looks like in the inputs the mocks receive.
_SIG_KEY: str = rpc._special_sig_key
_SECRET_SIG: str = rpc._special_secret_sig

USER_KUBECONFIG = """\
apiVersion: v1
kind: Config
clusters:
- name: agentplane
  cluster:
    server: https://agentplane.hcp.westeurope.azmk8s.io:443
    certificate-authority-data: Y2E=
contexts:
- name: agentplane
  context: {cluster: agentplane, user: clusterUser}
current-context: agentplane
users:
- name: clusterUser
  user:
    exec:
      apiVersion: client.authentication.k8s.io/v1beta1
      command: kubelogin
      args: [get-token, --environment, AzurePublicCloud, --server-id, 6dae42f8-4368-4678-94ff-3960e28e3630,
             --client-id, 80faf920-1908-4b52-b5ef-a8e7bedfc67a, --tenant-id, tenant, --login, devicecode]
"""

# Input that carries the Azure name of each resource type (else the mock uses the Pulumi name).
_NAME_INPUT = {
    "azure-native:resources:ResourceGroup": "resourceGroupName",
    "azure-native:keyvault:Vault": "vaultName",
    "azure-native:keyvault:Secret": "secretName",
    "azure-native:dbforpostgresql:Database": "databaseName",
    "azure-native:privatedns:PrivateZone": "privateZoneName",
    "azure-native:managedidentity:FederatedIdentityCredential": "federatedIdentityCredentialResourceName",
    "azure-native:containerregistry:Registry": "registryName",
}


def is_secret(value: Any) -> bool:
    """Whether a mocked input value is a Pulumi secret."""
    return isinstance(value, dict) and value.get(_SIG_KEY) == _SECRET_SIG


def secret_at(value: Any, *path: str | int) -> bool:
    """Whether the value at `path` (keys and list indices) in mocked inputs is secret (itself, or an
    enclosing object)."""
    for key in path:
        if is_secret(value):
            return True
        value = value[key]
    return is_secret(value)


def without_secrets(value: Any) -> Any:
    """A mocked input value with every secret replaced by a placeholder: what is not kept secret."""
    if is_secret(value):
        return "[secret]"
    if isinstance(value, dict):
        return {k: without_secrets(v) for k, v in value.items()}
    if isinstance(value, list):
        return [without_secrets(v) for v in value]
    return value


def reveal(value: Any) -> Any:
    """A mocked input value with every secret wrapper removed."""
    if is_secret(value):
        return reveal(value["value"])
    if isinstance(value, dict):
        return {k: reveal(v) for k, v in value.items()}
    if isinstance(value, list):
        return [reveal(v) for v in value]
    return value


@dataclass
class Registered:
    """One resource the program registered."""

    type: str
    name: str
    inputs: dict[str, Any]
    provider: str
    id: str
    state: dict[str, Any]
    urn: str = ""
    parent: str = ""
    """URN of the parent (the stack or a component)."""
    dependencies: list[str] = field(default_factory=list)
    """URNs this resource was registered as depending on (`depends_on` and its inputs' resources)."""

    @property
    def plain(self) -> dict[str, Any]:
        """The inputs with secrets revealed."""
        return dict(reveal(self.inputs))


class InfraMocks(pulumi.runtime.Mocks):
    def __init__(self) -> None:
        self.resources: list[Registered] = []
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def new_resource(self, args: pulumi.runtime.MockResourceArgs) -> tuple[str | None, dict[Any, Any]]:
        inputs: dict[str, Any] = dict(args.inputs)
        state: dict[str, Any] = dict(inputs)
        token = args.typ
        resource_id = f"{args.name}-id"
        if token.startswith("azure-native:"):
            name = str(reveal(inputs.get(_NAME_INPUT.get(token, ""))) or args.name)
            state["name"] = name
            _, module, kind = token.split(":")
            if token == "azure-native:resources:ResourceGroup":
                resource_id = f"/subscriptions/{SUBSCRIPTION}/resourceGroups/{name}"
            else:
                group = reveal(inputs.get("resourceGroupName")) or "unknown"
                resource_id = f"/subscriptions/{SUBSCRIPTION}/resourceGroups/{group}/providers/mock.{module}/{kind}/{args.name}"
            state["id"] = resource_id
            state.update(_azure_outputs(token, name, state))
        elif token == "random:index/randomPassword:RandomPassword":
            state["result"] = f"pw-{args.name}"
        elif token == "random:index/randomString:RandomString":
            state["result"] = "a1b2c3d4"
        self.resources.append(Registered(token, args.name, inputs, args.provider or "", resource_id, state))
        return resource_id, state

    def call(self, args: pulumi.runtime.MockCallArgs) -> tuple[dict[Any, Any], list[tuple[str, str]]]:
        call_args = dict(args.args)
        self.calls.append((args.token, call_args))
        if args.token == "azure-native:authorization:getClientConfig":
            return {
                "clientId": "deployer",
                "objectId": "deployer-object",
                "subscriptionId": SUBSCRIPTION,
                "tenantId": TENANT,
            }, []
        if args.token == "azure-native:containerservice:listManagedClusterUserCredentials":
            encoded = base64.b64encode(USER_KUBECONFIG.encode()).decode()
            return {"kubeconfigs": [{"name": "clusterUser", "value": encoded}]}, []
        if args.token == "azure-native:redis:listRedisKeys":
            return {"primaryKey": "redis-primary-key", "secondaryKey": "redis-secondary-key"}, []
        raise NotImplementedError(f"the mocks do not answer {args.token}")

    # Views for assertions.
    def of_type(self, token: str) -> list[Registered]:
        return [r for r in self.resources if r.type == token]

    def one(self, token: str, name: str | None = None) -> Registered:
        found = [r for r in self.of_type(token) if name is None or r.name == name]
        assert len(found) == 1, f"expected one {token} {name or ''}, found {[r.name for r in found]}"
        return found[0]

    def by_id(self, resource_id: str) -> Registered:
        found = [r for r in self.resources if r.id == resource_id]
        assert len(found) == 1, f"expected one resource with id {resource_id}, found {len(found)}"
        return found[0]

    def waits_for(self, resource: Registered, dependency: Registered) -> bool:
        """Whether `resource` is registered only after `dependency`: it, or a component it belongs to
        (whose children wait for it), depends on `dependency`."""
        by_urn = {r.urn: r for r in self.resources}
        current: Registered | None = resource
        while current is not None:
            if dependency.urn in current.dependencies:
                return True
            current = by_urn.get(current.parent)
        return False


class RecordingMonitor(MockMonitor):
    """The mock monitor, also recording each resource's URN, parent and dependencies (the mocks'
    `new_resource` does not see them)."""

    def __init__(self, mocks: InfraMocks) -> None:
        super().__init__(mocks)
        self.infra_mocks = mocks

    def RegisterResource(self, request: Any) -> Any:  # noqa: N802 (the gRPC method's name)
        response = super().RegisterResource(request)  # type: ignore[no-untyped-call]
        for registered in self.infra_mocks.resources:
            if registered.type == request.type and registered.name == request.name:
                registered.urn = response.urn
                registered.parent = request.parent
                registered.dependencies = list(request.dependencies)
        return response


def _uuid(name: str, kind: str) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"{kind}/{name}"))


def _azure_outputs(token: str, name: str, state: Mapping[str, Any]) -> dict[str, Any]:
    """The output-only properties Azure fills in, for the types the program reads them from."""
    if token == "azure-native:managedidentity:UserAssignedIdentity":
        return {
            "clientId": _uuid(name, "client"),
            "principalId": _uuid(name, "principal"),
            "tenantId": TENANT,
        }
    if token == "azure-native:containerservice:ManagedCluster":
        identity = dict(state.get("identity") or {})
        # In: a list of identity ids; out: a map id -> {clientId, principalId}.
        identity["userAssignedIdentities"] = {
            i: {"clientId": _uuid(i, "client"), "principalId": _uuid(i, "principal")}
            for i in identity.get("userAssignedIdentities") or []
        }
        return {
            "identity": identity,
            "oidcIssuerProfile": {**(state.get("oidcIssuerProfile") or {}), "issuerURL": ISSUER},
            "fqdn": f"{name}.hcp.westeurope.azmk8s.io",
            # The kubelet identity AKS creates in its node resource group.
            "identityProfile": {
                "kubeletidentity": {
                    "clientId": _uuid(name, "kubelet-client"),
                    "objectId": _uuid(name, "kubelet-object"),
                    "resourceId": f"/subscriptions/{SUBSCRIPTION}/resourceGroups/MC_{name}/providers/"
                    f"Microsoft.ManagedIdentity/userAssignedIdentities/{name}-agentpool",
                }
            },
        }
    if token == "azure-native:keyvault:Vault":
        return {
            "properties": {**(state.get("properties") or {}), "vaultUri": f"https://{name}.vault.azure.net/"}
        }
    if token == "azure-native:dbforpostgresql:Server":
        return {"fullyQualifiedDomainName": f"{name}.postgres.database.azure.com"}
    if token == "azure-native:containerregistry:Registry":
        return {"loginServer": f"{name}.azurecr.io"}
    if token == "azure-native:redis:Redis":
        return {"hostName": f"{name}.redis.cache.windows.net", "sslPort": 6380, "port": 6379}
    if token == "azure-native:operationalinsights:Workspace":
        return {"customerId": _uuid(name, "workspace")}
    return {}


def _stack_settings(stack_file: Path) -> tuple[dict[str, str], set[str]]:
    """Config as the Pulumi CLI hands it to a program: strings, objects as JSON; `secure:` values
    replaced by a placeholder (no passphrase here to decrypt them) and their keys marked secret."""
    document = yaml.safe_load(stack_file.read_text(encoding="utf-8")) or {}
    config: dict[str, str] = {}
    secret_keys: set[str] = set()
    for key, value in (document.get("config") or {}).items():
        found = False

        def replace(v: Any) -> Any:
            nonlocal found
            if isinstance(v, dict) and set(v) == {"secure"}:
                found = True
                return SECRET_PLACEHOLDER
            if isinstance(v, dict):
                return {k: replace(x) for k, x in v.items()}
            if isinstance(v, list):
                return [replace(x) for x in v]
            return v

        value = replace(value)
        config[key] = value if isinstance(value, str) else json.dumps(value)
        if found:
            secret_keys.add(key)
    return config, secret_keys


@dataclass
class StackRun:
    """What one run of the program under mocks produced."""

    stack: str
    mocks: InfraMocks
    outputs: dict[str, Any] = field(default_factory=dict)
    secret_outputs: set[str] = field(default_factory=set)


def run_stack(
    stack: str,
    *,
    root: Path = REPO,
    config: Mapping[str, Any] | None = None,
    secret_config: Mapping[str, Any] | None = None,
    entry_point: bool = False,
) -> StackRun:
    """Run the program for `stack` (config from the committed `Pulumi.<stack>.yaml`) over `root`.

    `config` overrides plain keys, `secret_config` adds keys as `pulumi config set --secret` would.
    With `entry_point`, the project's `infra/__main__.py` runs instead (as `pulumi up` would run it).
    """
    settings, secret_keys = _stack_settings(REPO / f"Pulumi.{stack}.yaml")
    for extra, secret in ((config or {}, False), (secret_config or {}, True)):
        for key, value in extra.items():
            settings[key] = value if isinstance(value, str) else json.dumps(value)
            if secret:
                secret_keys.add(key)
    run = StackRun(stack, InfraMocks())

    async def main() -> None:
        if entry_point:
            runpy.run_path(str(REPO / "infra" / "__main__.py"), run_name="__main__")
            return
        outputs = program(root)
        for key, output in outputs.items():
            run.outputs[key] = await output.future()
            if await output.is_secret():
                run.secret_outputs.add(key)

    def isolated() -> None:
        thread_loops: list[asyncio.AbstractEventLoop] = []

        def thread_loop() -> None:
            loop = asyncio.new_event_loop()
            asyncio.set_event_loop(loop)
            thread_loops.append(loop)

        loop = asyncio.new_event_loop()
        executor = ThreadPoolExecutor(max_workers=4, initializer=thread_loop)
        loop.set_default_executor(executor)
        asyncio.set_event_loop(loop)
        try:
            pulumi.runtime.set_all_config(settings, sorted(secret_keys))
            pulumi.runtime.set_mocks(
                run.mocks, project=PROJECT, stack=stack, preview=False, monitor=RecordingMonitor(run.mocks)
            )
            loop.run_until_complete(run_pulumi_func(main))
        finally:
            executor.shutdown(wait=True)
            for thread_loop_ in thread_loops:
                thread_loop_.close()
            asyncio.set_event_loop(None)
            loop.close()

    contextvars.Context().run(isolated)
    return run
