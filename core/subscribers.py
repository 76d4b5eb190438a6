"""Every subscriber to the charge lifecycle (`core.charging.lifecycle`): importing this module
registers them. The app imports it at wiring time; so do the test databases."""

from core.engagement import services, surveys, vouchers  # noqa: F401

__all__: list[str] = []
