"""`make scan`: sslyze, from its own venv, against our server's FTPS ports on loopback."""
