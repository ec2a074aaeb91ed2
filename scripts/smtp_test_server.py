"""The SMTP server Waymark's tests send to (started by scripts/test-services.sh).

aiosmtpd on loopback, storing every accepted message in one Maildir so tests can read
back exactly what was delivered. Recipients pick the server's answer, so tests can
provoke the replies a real relay gives:

- ``reject…@…``   -> 550 at RCPT (permanent: a bad mailbox)
- ``tempfail…@…`` -> 451 at RCPT (transient: try again later)
- anything else   -> accepted

Three listeners share the handler:

- ``--port``: plain SMTP, no authentication (what most tests use);
- ``--starttls-port``: STARTTLS required, then AUTH PLAIN/LOGIN required;
- ``--smtps-port``: implicit TLS (smtps://), then AUTH required.

The TLS listeners use ``--cert``/``--key`` and accept only ``--user``/``--password``.
The process runs until SIGTERM or SIGINT.
"""

import argparse
import mailbox
import signal
import ssl
import threading

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword


class MaildirHandler:
    def __init__(self, maildir: str):
        self.maildir = mailbox.Maildir(maildir, create=True)
        # Controllers run in their own threads; Maildir.add is not meant for
        # concurrent use of one object.
        self.lock = threading.Lock()

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        local = address.split("@", 1)[0].lower()
        if local.startswith("reject"):
            return f"550 5.1.1 <{address}>: mailbox unavailable"
        if local.startswith("tempfail"):
            return f"451 4.3.0 <{address}>: try again later"
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server, session, envelope):
        # The envelope goes in front as headers, so tests can check what the client
        # said in MAIL FROM / RCPT TO and whether it authenticated, next to the message.
        login = session.auth_data.login.decode() if isinstance(session.auth_data, LoginPassword) else ""
        head = (
            f"X-Envelope-From: {envelope.mail_from}\r\n"
            f"X-Envelope-To: {', '.join(envelope.rcpt_tos)}\r\n"
            f"X-Authenticated-As: {login}\r\n"
        )
        with self.lock:
            # Maildir.add writes to tmp/ and renames into new/: a reader never sees a
            # half-written message.
            self.maildir.add(head.encode() + envelope.original_content)
        return "250 2.0.0 Message accepted for delivery"


def authenticator(user: bytes, password: bytes):
    def check(server, session, envelope, mechanism, auth_data):
        ok = isinstance(auth_data, LoginPassword) and auth_data.login == user and auth_data.password == password
        return AuthResult(success=ok, handled=False, auth_data=auth_data if ok else None)

    return check


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--starttls-port", type=int, required=True)
    parser.add_argument("--smtps-port", type=int, required=True)
    parser.add_argument("--maildir", required=True)
    parser.add_argument("--cert", required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--user", required=True)
    parser.add_argument("--password", required=True)
    args = parser.parse_args()

    handler = MaildirHandler(args.maildir)
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(args.cert, args.key)
    auth = authenticator(args.user.encode(), args.password.encode())

    controllers = [
        Controller(handler, hostname=args.host, port=args.port),
        Controller(
            handler,
            hostname=args.host,
            port=args.starttls_port,
            tls_context=tls,
            require_starttls=True,
            authenticator=auth,
            auth_required=True,
        ),
        Controller(
            handler,
            hostname=args.host,
            port=args.smtps_port,
            ssl_context=tls,
            authenticator=auth,
            auth_required=True,
            # Implicit TLS: the connection is already encrypted when AUTH is offered.
            auth_require_tls=False,
        ),
    ]
    for controller in controllers:
        controller.start()
    print(f"smtp: listening on {args.host}:{args.port} (plain), {args.starttls_port} (starttls), "
          f"{args.smtps_port} (smtps); maildir {args.maildir}", flush=True)

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    stop.wait()
    for controller in controllers:
        controller.stop()


if __name__ == "__main__":
    main()
