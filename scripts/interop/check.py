#!/usr/bin/env python3
"""Helpers for scripts/interop.sh: a Python smtplib client and checks on drop-folder files.

A drop file is `x-sender:` and `x-receiver:` lines, then the message as the relay delivers it:
its own `Received:` header first, then the bytes the client sent. Each subcommand exits 0 when the
check holds and prints why not otherwise.
"""

import email
import email.policy
import hashlib
import os
import smtplib
import sys
import time


def fail(msg):
    print(msg, file=sys.stderr)
    sys.exit(1)


def drop_files(outbox):
    try:
        names = sorted(n for n in os.listdir(outbox) if n.endswith(".eml"))
    except FileNotFoundError:
        return []
    return [os.path.join(outbox, n) for n in names]


def find(outbox, marker, timeout):
    """Waits up to `timeout` s for exactly one drop file containing `marker`; prints its path."""
    deadline = time.monotonic() + float(timeout)
    needle = marker.encode()
    while True:
        hits = []
        for path in drop_files(outbox):
            try:
                with open(path, "rb") as f:
                    if needle in f.read():
                        hits.append(path)
            except FileNotFoundError:
                pass
        if hits or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    if len(hits) != 1:
        fail(f"expected exactly one drop file with {marker!r} in {outbox}, found {len(hits)}")
    print(hits[0])


def absent(outbox, marker, wait):
    """Waits `wait` s, then checks that no drop file contains `marker`."""
    time.sleep(float(wait))
    needle = marker.encode()
    for path in drop_files(outbox):
        with open(path, "rb") as f:
            if needle in f.read():
                fail(f"{path} contains {marker!r} but should not exist")


def split_drop(path):
    """Returns (envelope lines, message bytes) of a drop file."""
    with open(path, "rb") as f:
        data = f.read()
    envelope = []
    while data.lower().startswith((b"x-sender:", b"x-receiver:")):
        line, sep, data = data.partition(b"\r\n")
        if not sep:
            fail(f"{path}: envelope line without CRLF")
        envelope.append(line.decode("utf-8", "replace"))
    return envelope, data


def strip_received(path, message):
    """Removes the relay's Received: header (first header, possibly folded)."""
    if not message.lower().startswith(b"received:"):
        fail(f"{path}: message does not start with a Received: header: {message[:80]!r}")
    pos = message.index(b"\r\n") + 2
    while message[pos:pos + 1] in (b" ", b"\t"):
        pos = message.index(b"\r\n", pos) + 2
    return message[:pos], message[pos:]


def exact(path, original_path):
    """The delivered message is the Received header plus the original, byte for byte."""
    _, message = split_drop(path)
    _, rest = strip_received(path, message)
    with open(original_path, "rb") as f:
        original = f.read()
    if rest != original:
        i = next((i for i, (a, b) in enumerate(zip(rest, original)) if a != b), min(len(rest), len(original)))
        fail(
            f"{path}: differs from {original_path} at byte {i} "
            f"(delivered {len(rest)} bytes, sent {len(original)}): "
            f"delivered {rest[max(0, i - 20):i + 20]!r} vs sent {original[max(0, i - 20):i + 20]!r}"
        )


def envelope(path, *expected):
    """The drop file's envelope lines are exactly `expected` (as `x-sender: a` ... strings)."""
    got, _ = split_drop(path)
    norm = lambda lines: [l.lower().replace(" ", "") for l in lines]
    if norm(got) != norm(list(expected)):
        fail(f"{path}: envelope {got} != expected {list(expected)}")


def contains(path, *needles):
    """Every needle appears in the delivered message (the part after the envelope)."""
    _, message = split_drop(path)
    for n in needles:
        if n.encode() not in message:
            fail(f"{path}: {n!r} not found in the message")


def attachment(path, filename, sha256):
    """The MIME part named `filename`, decoded, has the given SHA-256."""
    _, message = split_drop(path)
    msg = email.message_from_bytes(message, policy=email.policy.default)
    for part in msg.walk():
        if part.get_filename() == filename:
            payload = part.get_payload(decode=True)
            got = hashlib.sha256(payload).hexdigest()
            if got != sha256:
                fail(f"{path}: attachment {filename} sha256 {got} ({len(payload)} bytes) != {sha256}")
            return
    fail(f"{path}: no attachment named {filename}")


def smtplib_send(host, port, sender, marker, *rcpts):
    """Python's smtplib.sendmail (EHLO, MAIL, one RCPT per recipient, DATA) to several recipients."""
    body = (
        f"From: Python <{sender}>\r\n"
        f"To: {', '.join(rcpts)}\r\n"
        f"Subject: smtplib {marker}\r\n"
        f"Message-ID: <{marker}@interop.test>\r\n"
        "\r\n"
        f"Sent by Python smtplib to {len(rcpts)} recipients. {marker}\r\n"
    )
    with smtplib.SMTP(host, int(port), timeout=30) as s:
        s.ehlo("python.interop.test")
        refused = s.sendmail(sender, list(rcpts), body.encode())
        if refused:
            fail(f"recipients refused: {refused}")


def smtplib_utf8(host, port, sender, marker, rcpt):
    """An internationalized address (RFC 6531): smtplib sends MAIL FROM ... SMTPUTF8, and refuses
    to unless the server announced SMTPUTF8."""
    body = (
        f"From: <{sender}>\r\n"
        f"To: <{rcpt}>\r\n"
        f"Subject: smtputf8 {marker}\r\n"
        "MIME-Version: 1.0\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n"
        "Content-Transfer-Encoding: 8bit\r\n"
        "\r\n"
        f"Grüße. {marker}\r\n"
    )
    with smtplib.SMTP(host, int(port), timeout=30) as s:
        s.ehlo("python.interop.test")
        if not s.has_extn("smtputf8"):
            fail("the server does not announce SMTPUTF8")
        refused = s.sendmail(sender, [rcpt], body.encode("utf-8"), mail_options=["SMTPUTF8", "BODY=8BITMIME"])
        if refused:
            fail(f"recipients refused: {refused}")


def sink_exact(dump_path, original_path):
    """An smtp-sink dump (-d) holds the message as delivered over SMTP: the sink's own X-* lines and
    Received header, the relay's Received header, then the original. smtp-sink writes LF line ends,
    undoes dot-stuffing and adds one empty line, so the original must match after CRLF -> LF."""
    with open(dump_path, "rb") as f:
        data = f.read()
    lines = data.split(b"\n")
    i = 0
    while lines[i].startswith(b"X-"):
        i += 1
    for who in ("smtp-sink", "relay"):
        if not lines[i].startswith(b"Received:"):
            fail(f"{dump_path}: expected the {who}'s Received: header at line {i + 1}: {lines[i][:80]!r}")
        i += 1
        while lines[i][:1] in (b" ", b"\t"):
            i += 1
    rest = b"\n".join(lines[i:])
    with open(original_path, "rb") as f:
        expected = f.read().replace(b"\r\n", b"\n") + b"\n"
    if rest != expected:
        j = next((j for j, (a, b) in enumerate(zip(rest, expected)) if a != b), min(len(rest), len(expected)))
        fail(
            f"{dump_path}: differs from {original_path} at byte {j} (got {len(rest)}, expected {len(expected)}): "
            f"{rest[max(0, j - 20):j + 20]!r} vs {expected[max(0, j - 20):j + 20]!r}"
        )


def smuggle(host, port, marker, rcpt):
    """An SMTP smuggling attempt: a bare-LF '.' line followed by a second transaction inside DATA.
    Prints the relay's reply to the real end of data (CRLF.CRLF): 250 (then the upstream must see one
    message whose body holds the fake commands) or a 5xx (then nothing at all is delivered)."""
    import socket

    s = socket.create_connection((host, int(port)), timeout=30)
    f = s.makefile("rb")

    def reply():
        lines = []
        while True:
            line = f.readline()
            if not line:
                fail(f"connection closed; got {lines}")
            lines.append(line.decode("utf-8", "replace").rstrip())
            if line[3:4] != b"-":
                return lines

    reply()
    s.sendall(b"EHLO smuggler.test\r\n")
    reply()
    for cmd in (f"MAIL FROM:<outer@src.test>", f"RCPT TO:<{rcpt}>", "DATA"):
        s.sendall(cmd.encode() + b"\r\n")
        r = reply()
        if cmd == "DATA" and not r[-1].startswith("354"):
            print(r[-1])
            return
    inner_rcpt = "inner-" + rcpt
    s.sendall(
        f"Subject: outer {marker}\r\n\r\nouter body\n.\n"
        f"MAIL FROM:<inner@src.test>\nRCPT TO:<{inner_rcpt}>\nDATA\n"
        f"Subject: inner {marker}\n\ninner body\n.\n"
        "\r\n.\r\n".encode()
    )
    print(reply()[-1])
    s.sendall(b"QUIT\r\n")
    s.close()


def make_message(path, marker):
    """A message for the byte-exact check: CRLF lines, a leading dot, 8-bit UTF-8, a 990-octet line,
    trailing spaces and an empty line before the end."""
    lines = [
        b"From: Curl <curl@src.test>",
        b"To: <dest@example.com>",
        b"Subject: curl " + marker.encode(),
        b"Message-ID: <" + marker.encode() + b"@interop.test>",
        b"MIME-Version: 1.0",
        b"Content-Type: text/plain; charset=utf-8",
        b"Content-Transfer-Encoding: 8bit",
        b"",
        b"Byte-exact check " + marker.encode(),
        b".a line that starts with a dot",
        b"..two dots",
        b".",
        b"Gr\xc3\xbc\xc3\x9fe, \xe6\x97\xa5\xe6\x9c\xac, \xf0\x9f\x93\xa7",
        b"trailing spaces   ",
        b"\ttab first",
        b"x" * 990,
        b"",
        b"end",
    ]
    with open(path, "wb") as f:
        f.write(b"\r\n".join(lines) + b"\r\n")


COMMANDS = {
    "find": find,
    "absent": absent,
    "exact": exact,
    "envelope": envelope,
    "contains": contains,
    "attachment": attachment,
    "smtplib-send": smtplib_send,
    "smtplib-utf8": smtplib_utf8,
    "make-message": make_message,
    "sink-exact": sink_exact,
    "smuggle": smuggle,
}

if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] not in COMMANDS:
        fail(f"usage: {sys.argv[0]} {'|'.join(COMMANDS)} ARGS...")
    try:
        COMMANDS[sys.argv[1]](*sys.argv[2:])
    except (OSError, smtplib.SMTPException) as e:
        fail(f"{sys.argv[1]}: {type(e).__name__}: {e}")
