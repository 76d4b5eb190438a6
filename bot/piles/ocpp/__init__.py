"""OCPP 1.6J charge points (DESIGN §6), beside the HTTP webhook and MQTT.

A charge point connects to `GET /ocpp/{charge_point_id}` (WebSocket, subprotocol `ocpp1.6`,
HTTP Basic auth with the pile's secret: security profile 1). Its calls become our §3 events on
the same path as HTTP and MQTT (`events.parse_batch` → the ingest writer's group commit) and are
answered after the commit; our commands become its calls:

| ours | OCPP 1.6 |
|---|---|
| start | RemoteStartTransaction(idTag = our session ref, connectorId = port) |
| stop | RemoteStopTransaction(transactionId = the charge's id) |
| reboot | Reset(Soft) |
| unlock | UnlockConnector(port) |
| lock | none: acknowledged ok = false |
| a port under repair | ChangeAvailability(Inoperative), Operative once repaired |

`gateway` holds the route, the handshake, the connections and our calls; `link` one connection
(the WebSocket adapter, its queue of calls); `point` the charge point's calls (the `ocpp`
package's `@on` handlers); `translate` the pure mapping of statuses, error codes, stop reasons
and meter values; `store` what is read from the database.
"""

from bot.piles.ocpp.gateway import OCPP, Gateway, setup

__all__ = ["OCPP", "Gateway", "setup"]
