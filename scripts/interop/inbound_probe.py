#!/usr/bin/env python3
"""Probes of the relay's inbound side with Python's own SMTP and TLS stacks (smtplib, ssl, socket),
for scripts/interop/inbound.sh. Each subcommand prints what it saw and exits 0 when the relay
behaved, 1 otherwise. Talks to 127.0.0.1 only.

  inbound_probe.py smtplib-starttls PORT CA USER PASSWORD SUBJECT
  inbound_probe.py smtplib-ssl PORT CA USER PASSWORD SUBJECT
  inbound_probe.py injection PORT CA
  inbound_probe.py auth-before-tls PORT USER PASSWORD
  inbound_probe.py per-ip PORT MAX
  inbound_probe.py deny PORT SOURCE_IP
  inbound_probe.py messages-per-connection PORT MAX
  inbound_probe.py slowloris PORT COMMAND_TIMEOUT_SECONDS
  inbound_probe.py lockout PORT CA SOURCE_IP USER PASSWORD FAILURES
"""

import base64
import smtplib
import socket
import ssl
import sys
import time

HOST = "127.0.0.1"


def fail(message):
    print("FAIL: " + message)
    sys.exit(1)


def context(ca):
    ctx = ssl.create_default_context(cafile=ca)
    return ctx


def message(subject, sender="scan@contoso.com", to="boss@example.com"):
    return (
        f"From: {sender}\r\nTo: {to}\r\nSubject: {subject}\r\n\r\nsent by inbound_probe.py\r\n"
    )


class Raw:
    """A line-level SMTP client on a socket that can be wrapped in TLS mid-session."""

    def __init__(self, port, source=None, timeout=10):
        self.sock = socket.create_connection(
            (HOST, port), timeout=timeout, source_address=(source, 0) if source else None
        )
        self.buf = b""

    def send(self, data):
        self.sock.sendall(data)

    def line(self):
        while b"\n" not in self.buf:
            chunk = self.sock.recv(4096)
            if not chunk:
                return None
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return line.decode("utf-8", "replace").rstrip("\r")

    def reply(self):
        lines = []
        while True:
            line = self.line()
            if line is None:
                return "\n".join(lines) if lines else None
            lines.append(line)
            if len(line) < 4 or line[3] != "-":
                return "\n".join(lines)

    def cmd(self, text):
        self.send(text.encode() + b"\r\n")
        return self.reply()

    def starttls(self, ca):
        if self.buf:
            fail(f"plaintext bytes after the 220 to STARTTLS: {self.buf!r}")
        self.sock = context(ca).wrap_socket(self.sock, server_hostname="localhost")


def smtplib_starttls(port, ca, user, password, subject):
    with smtplib.SMTP(HOST, int(port), timeout=15) as smtp:
        smtp.ehlo("python-client")
        if smtp.has_extn("auth"):
            fail("AUTH advertised before STARTTLS")
        smtp.starttls(context=context(ca))
        smtp.ehlo("python-client")
        if smtp.has_extn("starttls"):
            fail("STARTTLS advertised again after TLS")
        print("after TLS:", smtp.esmtp_features)
        smtp.login(user, password)
        refused = smtp.sendmail("scan@contoso.com", ["boss@example.com"], message(subject))
        if refused:
            fail(f"recipients refused: {refused}")
    print("sent with STARTTLS and AUTH", smtp.user if hasattr(smtp, "user") else "")


def smtplib_ssl(port, ca, user, password, subject):
    with smtplib.SMTP_SSL(HOST, int(port), context=context(ca), timeout=15) as smtp:
        smtp.ehlo("python-client")
        print("cipher:", smtp.sock.cipher())
        smtp.login(user, password)
        smtp.sendmail("scan@contoso.com", ["boss@example.com"], message(subject))
    print("sent over implicit TLS")


def injection(port, ca):
    """STARTTLS with a command behind it in the same packet: the command must never run."""
    c = Raw(int(port))
    print("banner:", c.reply())
    c.cmd("EHLO prober")
    c.send(b"STARTTLS\r\nRSET\r\n")
    reply = c.reply()
    print("STARTTLS:", reply)
    if not reply or not reply.startswith("220"):
        fail(f"STARTTLS answered {reply!r}")
    c.starttls(ca)
    c.sock.settimeout(1.5)
    try:
        extra = c.reply()
    except (socket.timeout, TimeoutError):
        extra = None
    if extra is not None:
        fail(f"the injected RSET was answered over TLS: {extra!r}")
    c.sock.settimeout(10)
    ehlo = c.cmd("EHLO prober")
    print("EHLO over TLS:", ehlo.splitlines()[0])
    if not ehlo.startswith("250"):
        fail(f"EHLO after TLS: {ehlo!r}")
    # The transaction form of the probe.
    c = Raw(int(port))
    c.reply()
    c.cmd("EHLO prober")
    c.send(b"STARTTLS\r\nMAIL FROM:<evil@example.com>\r\n")
    c.reply()
    c.starttls(ca)
    c.cmd("EHLO prober")
    rcpt = c.cmd("RCPT TO:<victim@example.com>")
    print("RCPT without MAIL after TLS:", rcpt)
    if not rcpt.startswith("503"):
        fail(f"the injected MAIL FROM was executed: RCPT got {rcpt!r}")
    print("injected commands were discarded")


def auth_before_tls(port, user, password):
    c = Raw(int(port))
    c.reply()
    ehlo = c.cmd("EHLO device")
    if "AUTH" in ehlo:
        fail(f"AUTH offered before TLS: {ehlo!r}")
    token = base64.b64encode(f"\0{user}\0{password}".encode()).decode()
    reply = c.cmd(f"AUTH PLAIN {token}")
    print("AUTH before TLS:", reply)
    if not reply.startswith("538 5.7.11"):
        fail(f"expected 538 5.7.11, got {reply!r}")


def per_ip(port, limit):
    limit = int(limit)
    held = []
    for _ in range(limit):
        c = Raw(int(port))
        banner = c.reply()
        if not banner.startswith("220"):
            fail(f"connection {len(held) + 1} of {limit} refused: {banner!r}")
        held.append(c)
    extra = Raw(int(port))
    reply = extra.reply()
    print(f"connection {limit + 1}:", reply)
    if reply != "421 4.7.0 Too many connections from your address":
        fail(f"expected 421 4.7.0, got {reply!r}")
    if extra.line() is not None:
        fail("the refused connection was not closed")
    # Another address is counted apart.
    other = Raw(int(port), source="127.0.0.4")
    if not other.reply().startswith("220"):
        fail("127.0.0.4 was refused too")


def deny(port, source):
    c = Raw(int(port), source=source)
    reply = c.reply()
    print(f"from {source}:", reply)
    if reply != f"554 5.7.1 {source} is not allowed to connect":
        fail(f"expected 554 5.7.1, got {reply!r}")
    if c.line() is not None:
        fail("the denied connection was not closed")


def messages_per_connection(port, limit):
    limit = int(limit)
    with smtplib.SMTP(HOST, int(port), timeout=15) as smtp:
        for i in range(limit):
            smtp.sendmail("app@contoso.com", ["r@example.com"], message(f"batch {i}"))
        code, text = smtp.mail("app@contoso.com")
        print(f"MAIL number {limit + 1}:", code, text.decode())
        if code != 421 or b"Too many messages" not in text:
            fail(f"expected 421 Too many messages, got {code} {text!r}")


def slowloris(port, timeout):
    timeout = float(timeout)
    c = Raw(int(port))
    c.reply()
    start = time.monotonic()
    c.sock.settimeout(0.2)
    payload = b"NOOP this line never ends " * 100
    got = b""
    for byte in payload:
        try:
            c.sock.sendall(bytes([byte]))
        except OSError:
            break
        try:
            data = c.sock.recv(4096)
            if not data:
                break
            got += data
            if b"\n" in got:
                break
        except (socket.timeout, TimeoutError):
            pass
        if time.monotonic() - start > timeout * 3 + 5:
            fail("the dribbling client was never cut")
    elapsed = time.monotonic() - start
    print(f"cut after {elapsed:.1f} s: {got!r}")
    if not got.startswith(b"421 4.4.2"):
        fail(f"expected 421 4.4.2, got {got!r}")
    if elapsed > timeout + 2:
        fail(f"cut after {elapsed:.1f} s, the command timeout is {timeout} s")


def lockout(port, ca, source, user, password, failures):
    c = Raw(int(port), source=source)
    c.reply()
    c.cmd("EHLO device")
    c.cmd("STARTTLS")
    c.starttls(ca)
    c.cmd("EHLO device")
    wrong = base64.b64encode(f"\0{user}\0not-{password}".encode()).decode()
    for i in range(int(failures)):
        reply = c.cmd(f"AUTH PLAIN {wrong}")
        if not reply.startswith("535 5.7.8"):
            fail(f"failure {i + 1}: expected 535 5.7.8, got {reply!r}")
    right = base64.b64encode(f"\0{user}\0{password}".encode()).decode()
    reply = c.cmd(f"AUTH PLAIN {right}")
    print("right password after the failures:", reply)
    if not reply.startswith("454 4.7.0"):
        fail(f"expected 454 4.7.0 (locked out), got {reply!r}")


COMMANDS = {
    "smtplib-starttls": smtplib_starttls,
    "smtplib-ssl": smtplib_ssl,
    "injection": injection,
    "auth-before-tls": auth_before_tls,
    "per-ip": per_ip,
    "deny": deny,
    "messages-per-connection": messages_per_connection,
    "slowloris": slowloris,
    "lockout": lockout,
}

if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] not in COMMANDS:
        print(__doc__)
        sys.exit(2)
    try:
        COMMANDS[sys.argv[1]](*sys.argv[2:])
    except (smtplib.SMTPException, OSError, ssl.SSLError) as e:
        fail(f"{type(e).__name__}: {e}")
    print("ok")
