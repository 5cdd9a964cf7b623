"""Developer tooling: demo PKI and tokens (`ext-authz dev init`), the local stack (`make run`)."""
