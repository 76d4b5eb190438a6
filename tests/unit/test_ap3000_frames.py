"""The AP3000 codec and mapping (bot/piles/ap3000/frames.py, mapping.py) against bytes written
by hand from ../shared/AP3000.md's layouts, and against docs/ap3000.md's tables row by row.

The frames below were laid out field by field (little-endian) with their checksums summed by
hand, so the codec is checked against the contract, not against itself.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from bot.piles.ap3000 import frames, mapping
from core.piles import events as pile_events

DEVICE = 305419896  # 0x12345678, on the wire 78 56 34 12
NOW = datetime(2025, 11, 26, 2, 17, 36, tzinfo=UTC)

# 0x21 status report, msg id 1: voltage 2200 (220.0 V) = 98 08, 2 ports: idle, charging;
# signal 20 (0x14), temp 0x5A (90 − 65 = 25 °C). Checksum 0x0255 = 597, sum of 0E..5A.
STATUS = bytes.fromhex("444E59 0E00 78563412 0100 21 9808 02 0001 14 5A 5502")
# 0x22 get time, msg id 2, no data: 07+00+78+56+34+12+02+00+22 = 0x013F.
GET_TIME = bytes.fromhex("444E59 0700 78563412 0200 22 3F01")
# 0x03 charge record, msg id 7: 3600 s, peak 400.0 W, 0.35 kWh, wire port 2 (our 3), remote
# start, card 0, stop reason 0x0B (port over-temperature), order "S42" NUL-padded to 16 bytes,
# second peak 0, ended at 1764123456 (0x69266340).
RECORD_DATA = bytes.fromhex(
    "100E A00F 2300 02 01 00000000 0B 533432 00000000000000000000000000 0000 40632669")
RECORD = bytes.fromhex("444E59 2A00 78563412 0700 03") + RECORD_DATA + bytes.fromhex("3104")
# 0x06 progress: wire port 0, charging, 600 s, 12 × 0.01 kWh, remote, 2345 × 0.1 W, period
# max/min/avg 0, "S42", timed energy 0, peak 0, 2201 × 0.1 V, 1066 mA, temp 0x5A, port 0x5F.
PROGRESS_DATA = bytes.fromhex(
    "00 01 5802 0C00 01 2909 0000 0000 0000 533432 00000000000000000000000000"
    " 0000 0000 9908 2A04 5A 5F")
# 0x20 register: type 5 (10 ports), firmware 100 (V1.00), 10 ports, node 1, …
REGISTER_DATA = bytes.fromhex("05 6400 0A 01 00 00 6400 00 00")
# Our start (command c7, msg id 7) for port 1 as 0x82: mode 0, amount 0, wire port 0, action 1,
# limit 480 min (E0 01), order "S42" padded, reserved 0.
START_82 = bytes.fromhex(
    "444E59 2100 78563412 0700 82 00 00000000 00 01 E001 533432 00000000000000000000000000 00"
    " 5903")


# --- frames -----------------------------------------------------------------------------------


def test_checksum_is_the_low_16_bits_of_the_byte_sum_from_length_to_data() -> None:
    assert frames.checksum(STATUS[3:-2]) == 0x0255 == 597
    assert frames.checksum(b"\xff" * 300) == (300 * 255) & 0xFFFF


def test_encoder_writes_the_hand_laid_bytes() -> None:
    assert frames.encode(DEVICE, 2, 0x22) == GET_TIME
    assert frames.encode(DEVICE, 1, 0x21, bytes.fromhex("9808020001145A")) == STATUS
    assert frames.encode(DEVICE, 7, 0x03, RECORD_DATA) == RECORD


def test_header_fields_are_little_endian() -> None:
    (frame,) = frames.Deframer().feed(STATUS)
    assert frame == frames.Frame(DEVICE, 1, 0x21, bytes.fromhex("9808020001145A"))
    (rec,) = frames.Deframer().feed(RECORD)
    assert (rec.device_id, rec.msg_id, rec.command, len(rec.data)) == (DEVICE, 7, 0x03, 35)


def test_a_frame_fed_one_byte_at_a_time_comes_out_once_whole() -> None:
    d = frames.Deframer()
    out = []
    for i, byte in enumerate(RECORD):
        got = d.feed(bytes([byte]))
        if i < len(RECORD) - 1:
            assert got == []
        out += got
    assert [f.command for f in out] == [0x03]
    assert (d.garbage_bytes, d.bad_checksums) == (0, 0)


def test_half_a_frame_waits_for_the_rest() -> None:
    d = frames.Deframer()
    assert d.feed(STATUS[:9]) == []
    assert d.buffered == 9
    (frame,) = d.feed(STATUS[9:] + GET_TIME[:4])
    assert frame.msg_id == 1
    (frame,) = d.feed(GET_TIME[4:])
    assert frame.command == 0x22


def test_two_and_three_frames_in_one_read() -> None:
    d = frames.Deframer()
    assert [f.msg_id for f in d.feed(STATUS + GET_TIME)] == [1, 2]
    assert [f.command for f in d.feed(GET_TIME + RECORD + STATUS)] == [0x22, 0x03, 0x21]
    assert d.frames == 5


def test_garbage_before_a_header_is_skipped_and_counted() -> None:
    d = frames.Deframer()
    (frame,) = d.feed(b"\x00\xffAT+OK\r\n" + STATUS)
    assert frame.msg_id == 1
    assert d.garbage_bytes == 9
    # "D" and "DN" at the end of a read may be a header's start: kept, not counted.
    assert d.feed(b"xyDN") == []
    assert d.garbage_bytes == 11
    (frame,) = d.feed(GET_TIME[2:])
    assert frame.command == 0x22 and d.garbage_bytes == 11


def test_a_bad_checksum_is_dropped_and_counted_and_the_next_frame_still_read() -> None:
    bad = STATUS[:-2] + b"\x56\x02"
    d = frames.Deframer()
    got = d.feed(bad + GET_TIME)
    assert [f.command for f in got] == [0x22]
    assert d.bad_checksums == 1 and d.garbage_bytes == 0
    # A flipped data byte is a bad checksum too.
    flipped = bytearray(RECORD)
    flipped[20] ^= 0x01
    assert d.feed(bytes(flipped)) == [] and d.bad_checksums == 2


def test_a_length_over_256_is_garbage() -> None:
    d = frames.Deframer()
    (frame,) = d.feed(b"DNY\x01\x01" + GET_TIME)  # length 257
    assert frame.command == 0x22
    assert d.garbage_bytes == 5 and d.bad_checksums == 0


def test_a_false_header_does_not_hold_the_real_frame_behind_it() -> None:
    d = frames.Deframer()
    (frame,) = d.feed(b"DNY\xff\x00" + STATUS)  # claims 255 bytes that never come
    assert frame.msg_id == 1 and d.garbage_bytes == 5


def test_order_numbers_are_nul_padded_ascii() -> None:
    assert frames.order_no(b"S42" + b"\x00" * 13) == "S42"
    assert frames.order_no(b"S42\x00junk\x00\x00\x00\x00\x00\x00\x00\x00\x00") == "S42"
    assert frames.order_no(b"\x00" * 16) == ""
    assert frames.order_no(b"ABCDEFGHIJKLMNOP") == "ABCDEFGHIJKLMNOP"
    assert frames.pack_order_no("S42") == b"S42" + b"\x00" * 13
    assert len(frames.pack_order_no("S1234567890ABCDE")) == 16
    with pytest.raises(ValueError):
        frames.pack_order_no("S1234567890ABCDEF")  # 17 bytes
    with pytest.raises(ValueError):
        frames.pack_order_no("充电")


def test_report_layouts() -> None:
    st = frames.decode_status(bytes.fromhex("9808020001145A"))
    assert (st.voltage, st.statuses, st.signal, st.temp) == (2200, (0, 1), 20, 0x5A)
    p = frames.decode_progress(PROGRESS_DATA)
    assert (p.port, p.seconds, p.energy, p.power, p.order_no) == (0, 600, 12, 2345, "S42")
    assert (p.voltage, p.current, p.port_temp) == (2201, 1066, 0x5F)
    r = frames.decode_record(RECORD_DATA)
    assert (r.seconds, r.peak_power, r.energy, r.port, r.stop_reason, r.order_no, r.ended_at) == (
        3600, 4000, 35, 2, 0x0B, "S42", 1764123456)
    reg = frames.decode_register(REGISTER_DATA)
    assert (reg.firmware, reg.port_count) == (100, 10)
    # 0x01 login: type, fw 100, 220.0 V, 2 ports (idle, charging), powers, peaks, node,
    # signal 31, type_ext, temp 0x55 (20 °C), work mode.
    login = frames.decode_login(
        bytes.fromhex("05 6400 9808 02 0001 0000 E803 0000 F401 01 1F 00 55 00"))
    assert (login.firmware, login.statuses, login.signal, login.temp) == (100, (0, 1), 31, 0x55)
    with pytest.raises(frames.Malformed):
        frames.decode_record(RECORD_DATA[:20])


# --- mapping ----------------------------------------------------------------------------------


def _valid(events: list[dict]) -> list[dict]:
    """The events pass the webhook's own validation, none refused."""
    batch = pile_events.parse_batch({"events": events})
    assert batch.rejected == [], batch.rejected
    return events


def test_progress_becomes_a_start_and_a_meter_on_our_port_1() -> None:
    p = frames.decode_progress(PROGRESS_DATA)
    started, meter = _valid(mapping.progress_events(p, NOW))
    assert started == {"id": "start:S42", "type": "session_started", "port": 1, "session": "S42",
                       "ts": (NOW - timedelta(seconds=600)).isoformat()}
    assert meter["id"] == "meter:S42:600" and meter["port"] == 1
    assert (meter["power_w"], meter["energy_wh"], meter["voltage_v"], meter["current_a"],
            meter["temperature_c"]) == (234.5, 120, 220.1, 1.066, 30)


def test_progress_of_a_charge_we_did_not_start_is_ignored() -> None:
    coin = bytearray(PROGRESS_DATA)
    coin[15:31] = b"\x00" * 16
    assert mapping.progress_events(frames.decode_progress(bytes(coin)), NOW) == []


def test_a_record_ends_the_charge_on_the_boards_clock_with_its_fault_first() -> None:
    r = frames.decode_record(RECORD_DATA)
    started, fault, ended = _valid(mapping.record_events(r, NOW))
    end_ts = datetime.fromtimestamp(1764123456, UTC)
    assert started == {"id": "start:S42", "type": "session_started", "port": 3,
                       "session": "S42", "ts": (end_ts - timedelta(hours=1)).isoformat()}
    assert (fault["type"], fault["code"], fault["port"], fault["ts"]) == (
        "fault", "over_temperature", 3, end_ts.isoformat())
    assert ended == {"id": "end:S42", "type": "session_ended", "ts": end_ts.isoformat(),
                     "port": 3, "session": "S42", "reason": "fault", "energy_wh": 350,
                     "duration_s": 3600}
    # Resent, it is the same events (same ids): duplicates for the store, not a second bill.
    assert mapping.record_events(r, NOW + timedelta(seconds=15)) == [started, fault, ended]


# docs/ap3000.md, "Stop reasons (0x03) → reason (and fault code)", row by row.
STOP_REASON_ROWS = [
    (0x00, "full", None), (0x09, "full", None), (0x1C, "full", None),
    (0x01, "user", None), (0x07, "user", None), (0x13, "user", None), (0x15, "user", None),
    (0x16, "user", None),
    (0x02, "limit", None), (0x03, "limit", None), (0x04, "limit", None),
    (0x05, "unplugged", None), (0x0D, "unplugged", None),
    (0x0C, "no_load", None), (0x0E, "no_load", None),
    (0x06, "fault", "overload"), (0x08, "fault", "overload"), (0x11, "fault", "overload"),
    (0x12, "fault", "overload"),
    (0x0A, "fault", "over_temperature"), (0x0B, "fault", "over_temperature"),
    (0x0F, "fault", "relay_open"),
    (0x10, "fault", "flooding"),
    (0x14, "fault", "door_open"),
    (0x17, "fault", "emergency_stop"),
    (0x18, "fault", "system_error"), (0x19, "fault", "system_error"),
    (0x1A, "fault", "over_voltage"), (0x1B, "fault", "under_voltage"),
    (0x1D, "fault", "stop_reason_29"), (0xFF, "fault", "stop_reason_255"),  # anything else
]


@pytest.mark.parametrize(("byte", "reason", "code"), STOP_REASON_ROWS)
def test_every_stop_reason_row(byte: int, reason: str, code: str | None) -> None:
    data = bytearray(RECORD_DATA)
    data[12] = byte  # the stop reason's offset: 2+2+2+1+1+4
    out = _valid(mapping.record_events(frames.decode_record(bytes(data)), NOW))
    ended = out[-1]
    assert ended["type"] == "session_ended" and ended["reason"] == reason
    faults = [e["code"] for e in out if e["type"] == "fault"]
    assert faults == ([code] if code else [])


def test_the_stop_reason_table_has_every_byte_of_the_contract() -> None:
    assert set(mapping.STOP_REASONS) == set(range(0x00, 0x1D))


# docs/ap3000.md, "Port status bytes → port_status (and fault / fault_cleared)".
STATUS_ROWS = [
    (0x00, "idle", None), (0x06, "idle", None), (0x01, "charging", None),
    (0x02, "plugged", None), (0x03, "full", None), (0x05, "full", None),
    (0x04, "fault", "short_circuit"), (0x10, "fault", "short_circuit"),
    (0x0D, "fault", "short_circuit"),
    (0x07, "fault", "meter_fault"), (0x0A, "fault", "meter_fault"),
    (0x08, "fault", "relay_open"), (0x0B, "fault", "relay_open"),
    (0x09, "fault", "relay_stuck"), (0x0E, "fault", "relay_stuck"),
    (0x0F, "fault", "card_reader"),
]


@pytest.mark.parametrize(("byte", "status", "code"), STATUS_ROWS)
def test_every_port_status_row(byte: int, status: str, code: str | None) -> None:
    out = _valid(mapping.port_changes("k", NOW, None, (0x00, byte)))
    mine = [e for e in out if e["port"] == 2]
    assert [e["status"] for e in mine if e["type"] == "port_status"] == [status]
    assert [e["code"] for e in mine if e["type"] == "fault"] == ([code] if code else [])


def test_port_status_only_for_changes_with_faults_raised_and_cleared() -> None:
    first = mapping.port_changes("a", NOW, None, (0x00, 0x01, 0x04))
    assert [(e["type"], e["port"]) for e in first] == [
        ("port_status", 1), ("port_status", 2), ("fault", 3), ("port_status", 3)]
    again = mapping.port_changes("b", NOW, (0x00, 0x01, 0x04), (0x00, 0x01, 0x04))
    assert again == []
    healed = _valid(mapping.port_changes("c", NOW, (0x00, 0x01, 0x04), (0x00, 0x03, 0x00)))
    assert [(e["type"], e["port"], e.get("status") or e.get("code")) for e in healed] == [
        ("port_status", 2, "full"), ("fault_cleared", 3, "short_circuit"),
        ("port_status", 3, "idle")]
    # A byte the contract does not list changes nothing.
    assert mapping.port_changes("d", NOW, (0x00,), (0x42,)) == []


def test_heartbeat_scales() -> None:
    st = frames.decode_status(bytes.fromhex("9808020001145A"))
    beat = mapping.heartbeat("hb:1", NOW, signal=st.signal, temp=st.temp)
    assert (beat["signal_dbm"], beat["temperature_c"]) == (-73, 25)
    reg = frames.decode_register(REGISTER_DATA)
    assert mapping.heartbeat("reg:1", NOW, firmware_version=reg.firmware)["firmware"] == "V1.00"
    quiet = mapping.heartbeat("hb:2", NOW, signal=99, temp=0)  # unknown signal, no sensor
    assert "signal_dbm" not in quiet and "temperature_c" not in quiet
    _valid([beat, quiet])


def test_door_alarm_is_a_door_open_fault_on_our_port() -> None:
    (fault,) = _valid(mapping.alarm_events(frames.decode_alarm(b"\x04\x01"), "k", NOW))
    assert (fault["code"], fault["port"]) == ("door_open", 5)
    assert mapping.alarm_events(frames.decode_alarm(b"\x04\x02"), "k", NOW) == []


# --- our commands -----------------------------------------------------------------------------


def test_start_becomes_the_hand_laid_0x82_frame() -> None:
    cmd = {"id": "c7", "type": "start", "port": 1, "session": "S42", "max_minutes": 480,
           "max_energy_wh": 2000}
    assert mapping.command_frame(DEVICE, cmd) == (7, 0x82, START_82)


def test_stop_reboot_and_what_ap3000_cannot_do() -> None:
    msg_id, byte, frame = mapping.command_frame(
        DEVICE, {"id": "c70000", "type": "stop", "port": 10, "session": "S42"})
    assert (msg_id, byte) == (70000 - 65535, 0x82)
    (f,) = frames.Deframer().feed(frame)
    # mode 0, amount 0, wire port 9 (our 10), action 0 (stop), limit 0, order S42
    assert f.data == bytes.fromhex("00 00000000 09 00 0000 533432") + b"\x00" * 14
    _, byte, frame = mapping.command_frame(DEVICE, {"id": "c8", "type": "reboot", "port": None})
    assert byte == 0x87 and frame == frames.encode(DEVICE, 8, 0x87)
    for kind in ("lock", "unlock"):
        with pytest.raises(mapping.Unsupported, match="not supported by AP3000"):
            mapping.command_frame(DEVICE, {"id": "c9", "type": kind, "port": 1})


def test_a_command_keeps_its_msg_id() -> None:
    assert mapping.msg_id_for("c7") == mapping.msg_id_for("c7") == 7
    assert mapping.msg_id_for("c65535") == 65535
    assert mapping.msg_id_for("c65536") == 1  # 0 is never used


def test_the_boards_answer_becomes_a_command_ack() -> None:
    ok, refused = _valid([mapping.ack_for_result("c7", 0, NOW),
                          mapping.ack_for_result("c8", 3, NOW)])
    assert (ok["id"], ok["command"], ok["ok"]) == ("ack:c7", "c7", True)
    assert (refused["ok"], refused["error"]) == (False, "result 3")
