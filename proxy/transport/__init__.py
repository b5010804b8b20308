"""What the calls to Gini ride on below HTTP: the TLS context, the checked 1xx connector and
the classification of connection failures."""
