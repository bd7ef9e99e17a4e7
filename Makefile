# securetransport: `make run` serves etc/securetransport.toml; `make test` runs every test.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
CONFIG ?= etc/securetransport.toml
DEMO   ?= demo

.PHONY: run test install lint bench scan clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.installed: setup.cfg pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e '.[test,bench]' --config-settings editable_mode=compat
	touch $@

install: $(VENV)/.installed

var/pki/server.crt: | $(VENV)/.installed
	$(BIN)/securetransport pki init var/pki --user $(DEMO)

var/demo-password: | $(VENV)/.installed var/pki/server.crt
	@mkdir -p var
	@umask 077; $(BIN)/python -c "import secrets; print(secrets.token_urlsafe(12))" > var/demo-password
	@$(BIN)/securetransport --config $(CONFIG) users add $(DEMO) --password-stdin \
		--certificate var/pki/$(DEMO).crt < var/demo-password
	@echo "created account '$(DEMO)'"

run: install var/pki/server.crt var/demo-password
	@$(BIN)/securetransport --config $(CONFIG) check
	@echo "account: $(DEMO)   password: $$(cat var/demo-password)"
	@echo "  lftp -u $(DEMO) -e 'set ssl:ca-file var/pki/ca.crt; ls; bye' ftp://127.0.0.1:2121"
	@echo "  curl --ssl-reqd --cacert var/pki/ca.crt -u $(DEMO):$$(cat var/demo-password) ftp://127.0.0.1:2121/"
	@echo "  curl --cacert var/pki/ca.crt --cert var/pki/$(DEMO).crt --key var/pki/$(DEMO).key -u $(DEMO): ftps://127.0.0.1:2990/"
	$(BIN)/twistd -n --pidfile= securetransport --config $(CONFIG)

test: install
	$(BIN)/python -m pytest -q -p no:randomly

lint: install
	$(BIN)/ruff check .
	$(BIN)/mypy

# SFTP: securetransport vs OpenSSH's sshd/sftp-server (apt-get install openssh-server; it
# is run on its own port, never as the system's sshd) vs asyncssh: `python -m bench.sftp -h`.
# The edge: FTPS direct to the server vs through an edge, same run: `python -m bench.edge -h`.
bench: install
	$(BIN)/python -m bench $(BENCH_ARGS)
	$(BIN)/python -m bench.edge $(EDGE_BENCH_ARGS)
	$(BIN)/python -m bench.sftp $(SFTP_BENCH_ARGS)

# sslyze pins cryptography < 47 (ours is newer): it gets its own venv; scan/venv.py pins it.
.venv-sslyze/.installed: | $(VENV)/.installed
	$(BIN)/python -c 'from scan.venv import ensure_sslyze; print(ensure_sslyze())'

.venv-ssh-audit/.installed: | $(VENV)/.installed
	$(BIN)/python -c 'from scan.ssh_audit import ensure_ssh_audit; print(ensure_ssh_audit())'

scan: install .venv-sslyze/.installed .venv-ssh-audit/.installed
	$(BIN)/python -m scan $(SCAN_ARGS)

# Hardening runs against a live server on loopback: `make fuzz FUZZ_ARGS=--quick`,
# `make soak SOAK_MINUTES=2` (python -m hardening --help).
SOAK_MINUTES ?= 10
.PHONY: fuzz soak

fuzz: install
	$(BIN)/python -m hardening fuzz $(FUZZ_ARGS)

soak: install
	$(BIN)/python -m hardening soak --minutes $(SOAK_MINUTES) $(SOAK_ARGS)

clean:
	rm -rf build dist *.egg-info _trial_temp* .pytest_cache .mypy_cache .ruff_cache
