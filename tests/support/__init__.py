"""What tests (and bench/) share that is not a fixture: settings, an in-process server, riders on
every skin, a `chargebot serve` process. Fixtures stay in tests/conftest.py; fakes of outside
services in tests/fakes/."""
