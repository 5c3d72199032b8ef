#!/usr/bin/env python3
"""The admin page in a real browser: headless Chromium (Selenium) against a running relay.

    scripts/interop/admin_page.py [SMARTHOST_BIN]      (default: target/release/smarthost)

Starts the relay with [admin] enabled on free ports, its one route pointing at an upstream that is
down; sends a message (smtplib) which is deferred; starts a tiny SMTP upstream; then loads the page,
enters the token, sees the queued message, clicks Retry, and sees the row go while the upstream
receives the message. Prints PASS or FAIL (exit 1); prints SKIP and exits 0 when Chromium or Selenium
cannot be installed (set ADMIN_PAGE_REQUIRED=1 to make that a failure, exit 1).

Installs what it needs: `apt-get install chromium chromium-driver` (Debian) and `pip install
selenium`, each only when missing.
"""

import json
import os
import shutil
import smtplib
import socket
import socketserver
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TOKEN = "interop-admin-token-" + os.urandom(8).hex()
CHROME_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-dev-shm-usage",
]


def log(message):
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def skip(reason):
    if os.environ.get("ADMIN_PAGE_REQUIRED") == "1":
        print(f"FAIL admin-page: cannot run: {reason}")
        sys.exit(1)
    print(f"SKIP admin-page: {reason}")
    sys.exit(0)


def find_browser():
    chrome = next((p for p in ("/usr/bin/chromium", "/usr/bin/chromium-browser") if os.path.exists(p)), None)
    driver = shutil.which("chromedriver") or next(
        (p for p in ("/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver") if os.path.exists(p)), None
    )
    return chrome, driver


def install():
    chrome, driver = find_browser()
    if not (chrome and driver):
        log("installing chromium and chromium-driver (apt)")
        sudo = [] if os.geteuid() == 0 else ["sudo", "-n"]
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        try:
            subprocess.run(sudo + ["apt-get", "update", "-qq"], check=True, env=env,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=600)
            subprocess.run(sudo + ["apt-get", "install", "-y", "-qq", "--no-install-recommends",
                                   "chromium", "chromium-driver"], check=True, env=env,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=1200)
        except (OSError, subprocess.SubprocessError) as e:
            skip(f"cannot install chromium and chromium-driver with apt-get: {e}")
        chrome, driver = find_browser()
        if not (chrome and driver):
            skip("chromium or chromedriver is still missing after apt-get install")
    try:
        import selenium  # noqa: F401
    except ImportError:
        log("installing selenium (pip)")
        pip = [sys.executable, "-m", "pip", "install", "-q", "selenium"]
        done = subprocess.run(pip, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode == 0
        if not done:  # Debian's externally managed Python
            done = subprocess.run(pip + ["--break-system-packages"], stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL).returncode == 0
        if not done:
            skip("cannot install selenium with pip")
        try:
            import selenium  # noqa: F401,F811
        except ImportError:
            skip("selenium is not importable after pip install")
    return chrome, driver


def free_ports(n):
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def wait_for_port(port, seconds=30):
    deadline = time.time() + seconds
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port}")


class Upstream(socketserver.ThreadingTCPServer):
    """Just enough SMTP to accept mail: every message's content is kept in `messages`."""

    allow_reuse_address = True
    daemon_threads = True

    def __init__(self, port):
        self.messages = []
        super().__init__(("127.0.0.1", port), UpstreamSession)


class UpstreamSession(socketserver.StreamRequestHandler):
    def handle(self):
        self.wfile.write(b"220 upstream.test ESMTP\r\n")
        while True:
            line = self.rfile.readline()
            if not line:
                return
            verb = line[:4].upper()
            if verb in (b"EHLO", b"HELO"):
                self.wfile.write(b"250-upstream.test\r\n250 8BITMIME\r\n")
            elif verb == b"DATA":
                self.wfile.write(b"354 go ahead\r\n")
                data = []
                while True:
                    chunk = self.rfile.readline()
                    if not chunk or chunk == b".\r\n":
                        break
                    data.append(chunk)
                self.server.messages.append(b"".join(data))
                self.wfile.write(b"250 2.0.0 queued\r\n")
            elif verb == b"QUIT":
                self.wfile.write(b"221 bye\r\n")
                return
            else:
                self.wfile.write(b"250 ok\r\n")


def api(admin_port, path, method="GET"):
    request = urllib.request.Request(f"http://127.0.0.1:{admin_port}{path}", method=method,
                                     headers={"Authorization": f"Bearer {TOKEN}"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def wait(what, condition, seconds=30):
    deadline = time.time() + seconds
    while time.time() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.2)
    raise RuntimeError(f"timed out waiting for {what}")


def run(binary, chrome, driver_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By

    smtp_port, admin_port, upstream_port = free_ports(3)
    tmp = tempfile.mkdtemp(prefix="smarthost-admin-page.")
    config = os.path.join(tmp, "smarthost.toml")
    with open(config, "w") as f:
        f.write(f"""
data_dir = "{tmp}/data"
hostname = "relay.test"
[[listener]]
address = "127.0.0.1:{smtp_port}"
relay_from = ["127.0.0.1"]
[queue]
retry = ["1h"]
[admin]
enabled = true
address = "127.0.0.1:{admin_port}"
token_env = "SMARTHOST_ADMIN_TOKEN"
[[route]]
name = "upstream"
domains = ["*"]
host = "127.0.0.1"
port = {upstream_port}
tls = "none"
connect_timeout = "2s"
""")
    env = dict(os.environ, SMARTHOST_ADMIN_TOKEN=TOKEN, RUST_LOG="warn")
    relay_log = open(os.path.join(tmp, "relay.log"), "w")
    relay = subprocess.Popen([binary, "serve", "--config", config], env=env,
                             stdout=relay_log, stderr=subprocess.STDOUT)
    upstream = None
    browser = None
    try:
        wait_for_port(smtp_port)
        wait_for_port(admin_port)
        log("sending a message while the upstream is down")
        with smtplib.SMTP("127.0.0.1", smtp_port, timeout=10) as s:
            s.sendmail("scanner@contoso.example", ["alice@remote.example"],
                       b"From: scanner@contoso.example\r\nTo: alice@remote.example\r\n"
                       b"Subject: admin page\r\n\r\nhello\r\n")
        queued = wait("a deferred message", lambda: [
            m for m in api(admin_port, "/api/v1/queue")
            if m["attempts"] >= 1 and not m["active"]])
        queue_id = queued[0]["id"]
        log(f"message {queue_id} deferred; starting the upstream")
        upstream = Upstream(upstream_port)
        threading.Thread(target=upstream.serve_forever, daemon=True).start()

        options = Options()
        options.binary_location = chrome
        for flag in CHROME_FLAGS:
            options.add_argument(flag)
        browser = webdriver.Chrome(service=Service(executable_path=driver_path), options=options)
        browser.set_page_load_timeout(30)
        browser.get(f"http://127.0.0.1:{admin_port}/")
        token_field = wait("the token field", lambda: (
            browser.find_element(By.ID, "token") if browser.find_element(By.ID, "token").is_displayed() else None))
        token_field.send_keys(TOKEN)
        browser.find_element(By.ID, "login-button").click()
        row_css = f'#queue tr[data-id="{queue_id}"]'
        row = wait("the queued message in the table", lambda: browser.find_elements(By.CSS_SELECTOR, row_css))
        text = row[0].text
        assert "alice@remote.example" in text and "deferred" in text, text
        assert browser.execute_script("return sessionStorage.getItem('smarthost-admin-token')") == TOKEN
        log("the page lists the message; clicking Retry")
        row[0].find_element(By.CSS_SELECTOR, 'button[data-action="retry"]').click()
        wait("the upstream to receive the message", lambda: upstream.messages)
        wait("the row to go", lambda: not browser.find_elements(By.CSS_SELECTOR, row_css))
        assert b"Subject: admin page" in upstream.messages[0]
        assert api(admin_port, "/api/v1/queue") == []
        notice = browser.find_element(By.ID, "notice").text
        log(f"notice: {notice!r}")
        print("PASS admin-page: token entered, message listed, Retry delivered it")
        return 0
    except Exception as e:  # noqa: BLE001 (report any failure)
        print(f"FAIL admin-page: {type(e).__name__}: {e}")
        relay_log.flush()
        with open(os.path.join(tmp, "relay.log")) as f:
            print("relay log (tail):\n" + "".join(f.readlines()[-20:]))
        if browser is not None:
            try:
                print("page text:\n" + browser.find_element(By.TAG_NAME, "body").text[:2000])
            except Exception:  # noqa: BLE001
                pass
        return 1
    finally:
        if browser is not None:
            browser.quit()
        if upstream is not None:
            upstream.shutdown()
            upstream.server_close()
        relay.terminate()
        try:
            relay.wait(timeout=15)
        except subprocess.TimeoutExpired:
            relay.kill()
        if os.environ.get("KEEP_TMP") != "1":
            shutil.rmtree(tmp, ignore_errors=True)


def main():
    binary = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "target/release/smarthost")
    if not os.access(binary, os.X_OK):
        print(f"FAIL admin-page: no smarthost binary at {binary}")
        return 1
    chrome, driver = install()
    return run(binary, chrome, driver)


if __name__ == "__main__":
    sys.exit(main())
