"""Flow 1: a caller's Pay API request relayed to Gini with credentials, and the answer back,
with URL rewriting and the optional response cache."""
