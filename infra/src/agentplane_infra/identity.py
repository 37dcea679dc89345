"""User-assigned managed identities bound to Kubernetes service accounts, with least-privilege roles."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import TypedDict

import pulumi
from pulumi_azure_native import authorization, managedidentity

# Built-in Azure role definitions (ids are the same in every tenant).
KEY_VAULT_SECRETS_USER = "4633458b-17de-408a-b874-0445c86b69e6"
"""Read secret contents. Not Secrets Officer: nothing in the cluster writes secrets."""
NETWORK_CONTRIBUTOR = "4d97b98b-1d4f-4787-a291-c67834d212e7"
ACR_PULL = "7f951dda-4ed3-4680-a7ca-43fe172d538d"
"""Pull images from a container registry, nothing else."""
MAX_FEDERATED_CREDENTIALS = 20
"""Azure's limit of federated credentials per user-assigned identity."""
TOKEN_AUDIENCE = "api://AzureADTokenExchange"


def role_definition_id(subscription_id: pulumi.Input[str], role: str) -> pulumi.Output[str]:
    """The full id of a built-in role definition in a subscription."""
    return pulumi.Output.concat(
        "/subscriptions/", subscription_id, "/providers/Microsoft.Authorization/roleDefinitions/", role
    )


class WorkloadIdentityArgs(TypedDict):
    resource_group_name: pulumi.Input[str]
    location: pulumi.Input[str]
    oidc_issuer_url: pulumi.Input[str]
    """The AKS cluster's OIDC issuer."""
    subjects: Sequence[str]
    """Service account subjects (`system:serviceaccount:<namespace>:<name>`) that may use the identity."""
    secret_scopes: Mapping[str, pulumi.Input[str]]
    """Key Vault secrets the identity may read (name -> id), each its own role assignment scope."""
    subscription_id: pulumi.Input[str]
    tags: pulumi.Input[dict[str, str]]


class WorkloadIdentity(pulumi.ComponentResource):
    client_id: pulumi.Output[str]
    principal_id: pulumi.Output[str]

    def __init__(
        self, name: str, args: WorkloadIdentityArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("agentplane:identity:WorkloadIdentity", name, None, opts)
        rg = args["resource_group_name"]
        subjects = list(args["subjects"])
        if len(subjects) > MAX_FEDERATED_CREDENTIALS:
            raise ValueError(
                f"{name}: {len(subjects)} service accounts, but an identity takes at most "
                f"{MAX_FEDERATED_CREDENTIALS} federated credentials"
            )

        identity = managedidentity.UserAssignedIdentity(
            f"{name}-identity",
            resource_group_name=rg,
            location=args["location"],
            tags=args["tags"],
            opts=pulumi.ResourceOptions(parent=self),
        )
        # Azure refuses concurrent writes of one identity's federated credentials: chain them.
        previous: list[pulumi.Resource] = []
        for subject in subjects:
            credential_name = re.sub(r"[^A-Za-z0-9-]+", "-", subject.removeprefix("system:serviceaccount:"))
            credential = managedidentity.FederatedIdentityCredential(
                f"{name}-{credential_name}",
                resource_group_name=rg,
                resource_name_=identity.name,
                federated_identity_credential_resource_name=credential_name,
                issuer=args["oidc_issuer_url"],
                subject=subject,
                audiences=[TOKEN_AUDIENCE],
                opts=pulumi.ResourceOptions(parent=self, depends_on=previous),
            )
            previous = [credential]

        secrets_user = role_definition_id(args["subscription_id"], KEY_VAULT_SECRETS_USER)
        for secret, scope in sorted(args["secret_scopes"].items()):
            authorization.RoleAssignment(
                f"{name}-reads-{secret}",
                scope=scope,
                role_definition_id=secrets_user,
                principal_id=identity.principal_id,
                principal_type="ServicePrincipal",
                opts=pulumi.ResourceOptions(parent=self),
            )

        self.client_id = identity.client_id
        self.principal_id = identity.principal_id
        self.register_outputs({"client_id": self.client_id, "principal_id": self.principal_id})
