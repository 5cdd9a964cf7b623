"""Trust material: X.509 roots and JWT keys per trust domain, JWKS per OIDC issuer."""
