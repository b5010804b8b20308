"""Flows 2-4: Gini tokens for callers (derived and anonymous users), the token caches, the
proxy's own Gini client and the credential store of anonymous users."""
