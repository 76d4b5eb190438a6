"""What tests (and bench/) share: settings, an in-process server, riders on every skin, a
`chargebot serve` process, a pile's side of the webhook, hypothesis strategies, test tariffs and
WeChat Pay credentials. No test module imports another; what two share lives here. Fixtures for
every test stay in tests/conftest.py (the few that only some modules use live here and are
imported by those modules); fakes of outside services in tests/fakes/."""
