"""A raw MySQL client for the tests: logs in with no password, sends each command given
as hex on the command line (sequence id 0), and prints one JSON line per command with
the first packet of the answer. It exists to send what no client library sends: raw
COM_SHUTDOWN, COM_BINLOG_DUMP, COM_SET_OPTION, COM_STMT_EXECUTE of statement id -1.

usage: raw_client.py HOST PORT COMMAND...

A COMMAND is hex bytes, or `stmt:SQL`: COM_STMT_PREPARE then COM_STMT_EXECUTE of it,
printing the binary-protocol rows it returns (strings decoded as UTF-8).
"""
import json
import socket
import struct
import sys


def read_packet(sock):
    header = b""
    while len(header) < 4:
        chunk = sock.recv(4 - len(header))
        if not chunk:
            return None, None
        header += chunk
    length = header[0] | header[1] << 8 | header[2] << 16
    payload = b""
    while len(payload) < length:
        chunk = sock.recv(length - len(payload))
        if not chunk:
            return None, None
        payload += chunk
    return header[3], payload


def write_packet(sock, seq, payload):
    sock.sendall(struct.pack("<I", len(payload))[:3] + bytes([seq]) + payload)


def describe(payload):
    if payload is None:
        return {"closed": True}
    first = payload[0] if payload else None
    answer = {"first": first, "length": len(payload)}
    if first == 0xFF:
        answer["code"] = struct.unpack("<H", payload[1:3])[0]
        answer["message"] = payload[9:].decode("utf-8", "replace")
    return answer


def lenenc(data, pos):
    first = data[pos]
    if first < 0xFB:
        return first, pos + 1
    width = {0xFC: 2, 0xFD: 3, 0xFE: 8}[first]
    return int.from_bytes(data[pos + 1:pos + 1 + width], "little"), pos + 1 + width


def column_type(definition):
    pos = 0
    for _ in range(6):
        n, pos = lenenc(definition, pos)
        pos += n
    pos += 1  # length of the fixed fields
    return definition[pos + 6]


def prepared(sock, sql):
    write_packet(sock, 0, b"\x16" + sql.encode())
    _, ok = read_packet(sock)
    if ok[0] == 0xFF:
        return {"error": describe(ok)}
    stmt_id, columns, params = struct.unpack("<IHH", ok[1:9])
    for count in (params, columns):
        for _ in range(count):
            read_packet(sock)
        if count:
            read_packet(sock)
    write_packet(sock, 0, b"\x17" + struct.pack("<IBI", stmt_id, 0, 1))
    _, first = read_packet(sock)
    if first[0] == 0xFF:
        return {"error": describe(first)}
    if first[0] == 0x00:
        return {"ok": True}
    columns, _ = lenenc(first, 0)
    types = [column_type(read_packet(sock)[1]) for _ in range(columns)]
    read_packet(sock)
    rows = []
    while True:
        _, row = read_packet(sock)
        if row[0] == 0xFE and len(row) < 9:
            break
        if row[0] == 0xFF:
            return {"error": describe(row), "rows": rows}
        bitmap = row[1:1 + (columns + 9) // 8]
        pos = 1 + len(bitmap)
        values = []
        for index, kind in enumerate(types):
            bit = index + 2
            if bitmap[bit // 8] & (1 << (bit % 8)):
                values.append(None)
                continue
            fixed = {1: "<b", 2: "<h", 13: "<h", 3: "<i", 9: "<i", 4: "<f", 8: "<q", 5: "<d"}
            if kind in fixed:
                size = struct.calcsize(fixed[kind])
                values.append(struct.unpack(fixed[kind], row[pos:pos + size])[0])
                pos += size
            elif kind in (7, 10, 11, 12):
                size = row[pos]
                values.append(row[pos + 1:pos + 1 + size].hex())
                pos += 1 + size
            else:
                size, pos = lenenc(row, pos)
                values.append(row[pos:pos + size].decode("utf-8", "replace"))
                pos += size
        rows.append(values)
    return {"rows": rows, "types": types}


def main():
    host, port = sys.argv[1], int(sys.argv[2])
    sock = socket.create_connection((host, port), timeout=10)
    _, greeting = read_packet(sock)
    print(json.dumps({"greeting": greeting[1:greeting.index(b"\0", 1)].decode()}), flush=True)
    # PROTOCOL_41 | SECURE_CONNECTION | PLUGIN_AUTH | TRANSACTIONS | LONG_PASSWORD
    capabilities = 0x200 | 0x8000 | 0x80000 | 0x2000 | 0x1
    login = struct.pack("<IIB", capabilities, 1 << 24, 45) + b"\0" * 23
    login += b"raw\0" + b"\0" + b"mysql_native_password\0"
    write_packet(sock, 1, login)
    seq, answer = read_packet(sock)
    while answer is not None and answer[:1] == b"\xfe":
        write_packet(sock, seq + 1, b"")
        seq, answer = read_packet(sock)
    print(json.dumps({"login": describe(answer)}), flush=True)
    for command in sys.argv[3:]:
        if command.startswith("stmt:"):
            print(json.dumps({"stmt": prepared(sock, command[5:])}), flush=True)
            continue
        write_packet(sock, 0, bytes.fromhex(command))
        sock.settimeout(10)
        try:
            _, answer = read_packet(sock)
        except socket.timeout:
            answer = b""
        print(json.dumps({"command": command[:2], "answer": describe(answer)}), flush=True)
        # Drain the rest of a multi-packet answer.
        sock.settimeout(0.3)
        try:
            while True:
                _, rest = read_packet(sock)
                if rest is None:
                    break
        except socket.timeout:
            pass


main()
