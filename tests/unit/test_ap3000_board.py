"""The AP3000 board emulator (tests/support/ap3000_board.py) against the contract's own
arithmetic (`../shared/AP3000.md`), before it is trusted to judge the gateway: no app here."""

from __future__ import annotations

import struct

from tests.support.ap3000_board import (
    GET_TIME,
    PROGRESS,
    RECORD,
    REGISTER,
    START_STOP,
    STATUS,
    STOP_PORT_HOT,
    Board,
    Deframer,
    StartStop,
    centi_kwh,
    encode,
    temp_byte,
)


def test_a_frame_is_header_length_id_msg_command_data_and_the_low_16_bits_of_the_sum() -> None:
    raw = encode(0x12345678, 1, GET_TIME)
    # length 7 = device id 4 + msg id 2 + command 1; 0x07+0x78+0x56+0x34+0x12+0x01+0x22 = 0x13E
    assert raw.hex(" ") == "44 4e 59 07 00 78 56 34 12 01 00 22 3e 01"
    bad = encode(0x12345678, 1, GET_TIME, bad_checksum=True)
    assert bad[:-2] == raw[:-2] and bad[-2:] != raw[-2:]
    big = encode(1, 0xFFFF, RECORD, bytes([0xFF]) * 300 + bytes(10))
    assert struct.unpack_from("<H", big, 3)[0] == 317
    assert struct.unpack_from("<H", big, len(big) - 2)[0] == sum(big[3:-2]) & 0xFFFF


def test_the_reports_have_the_contracts_sizes_and_scales() -> None:
    board = Board("127.0.0.1", 1, 7, ports=10)
    assert len(board.register_data()) == 11
    assert struct.unpack("<BH", board.register_data()[:3]) == (5, 100)  # firmware 100 = V1.00
    status = board.status_data(voltage_v=229.8, signal=25, temp_c=31)
    assert struct.unpack_from("<HB", status) == (2298, 10) and status[-2:] == bytes([25, 96])
    data = Board.progress_data(2, "S7", seconds=1830, energy_wh=60, power_w=253.4,
                               voltage_v=220.1, current_a=1.152, port_temp_c=36, temp_c=None)
    assert len(data) == 41
    fields = struct.unpack("<BBHHBHHHH16sHHHHBB", data)
    assert fields[:6] == (1, 1, 1830, 6, 1, 2534)  # port 2 is 1 on the wire; 60 Wh = 6 × 0.01 kWh
    assert fields[9] == b"S7" + bytes(14)
    assert fields[12:] == (2201, 1152, 0, 101)  # 0.1 V, 0.001 A, no sensor, 36 °C + 65
    record = Board.record_data(10, "S12", seconds=1835, energy_wh=150, peak_w=310.5,
                               stop_reason=STOP_PORT_HOT, ended_at=1_900_000_000)
    assert len(record) == 35
    assert struct.unpack("<HHHBBIB16sHI", record) == (
        1835, 3105, 15, 9, 1, 0, 0x0B, b"S12" + bytes(13), 0, 1_900_000_000)
    assert (centi_kwh(1230), temp_byte(-5), temp_byte(None)) == (123, 60, 0)


def test_the_boards_reading_of_a_stream_survives_splits_merges_garbage_and_bad_frames() -> None:
    frames = [encode(0x12345678, 1, REGISTER, bytes(11)), encode(0x12345678, 2, STATUS),
              encode(9, 3, START_STOP, b"\x00" * 9 + b"S1" + bytes(15))]
    stream = (b"\x00DN" + frames[0] + b"DNY\xff\x0f" + encode(1, 4, PROGRESS, bad_checksum=True)
              + frames[1] + frames[2])
    for step in (1, 3, 7, len(stream)):
        reader = Deframer()
        got = []
        for at in range(0, len(stream), step):
            got += reader.feed(stream[at:at + step])
        assert [(f.device_id, f.msg_id, f.command) for f in got] == [
            (0x12345678, 1, REGISTER), (0x12345678, 2, STATUS), (9, 3, START_STOP)], step
        assert len(reader.bad) == 2 and reader.junk.startswith(b"\x00DN")
    cmd = StartStop.decode(got[2])
    assert (cmd.mode, cmd.port, cmd.action, cmd.order_no) == (0, 0, 0, "S1")
