# The two front-door commands (see README): `make serve` and `make test`.
# Both install into .venv at the repository root first (scripts/install.sh is idempotent).
.PHONY: install install-test serve test

install:
	scripts/install.sh

install-test:
	scripts/install.sh test
	scripts/install-system-test-deps.sh

serve: install
	.venv/bin/nextgpt serve

test: install-test
	.venv/bin/python -m pytest -q
