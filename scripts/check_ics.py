"""Reads iCalendar files with Python's icalendar (a parser that did not write them) and
prints what the meeting tests check, as JSON: METHOD, each VEVENT's UID, SEQUENCE,
DTSTART with its TZID, RRULE, EXDATE, RECURRENCE-ID and attendees' PARTSTAT, and the
VTIMEZONEs present. Fails (exit 1) if a TZID has no VTIMEZONE or a line is longer than
75 octets or not CRLF-terminated.

Usage: python check_ics.py FILE...
"""
import json
import sys

import icalendar


def check(path):
    raw = open(path, "rb").read()
    for number, line in enumerate(raw.split(b"\r\n")[:-1], 1):
        if len(line) > 75:
            raise SystemExit(f"{path}: line {number} has {len(line)} octets")
        if b"\n" in line or b"\r" in line:
            raise SystemExit(f"{path}: line {number} is not CRLF-terminated")
    if not raw.endswith(b"\r\n"):
        raise SystemExit(f"{path}: does not end with CRLF")
    cal = icalendar.Calendar.from_ical(raw)
    zones = [str(z["TZID"]) for z in cal.walk("VTIMEZONE")]
    observances = {
        str(z["TZID"]): len(z.walk("STANDARD")) + len(z.walk("DAYLIGHT"))
        for z in cal.walk("VTIMEZONE")
    }
    events = []
    for ev in cal.walk("VEVENT"):
        start = ev.get("DTSTART")
        tzid = start.params.get("TZID") if start is not None else None
        if tzid is not None and tzid not in zones:
            raise SystemExit(f"{path}: TZID {tzid} has no VTIMEZONE")
        exdates = []
        ex = ev.get("EXDATE")
        for item in ex if isinstance(ex, list) else ([ex] if ex is not None else []):
            exdates.extend(d.dt.strftime("%Y%m%dT%H%M%S") for d in item.dts)
        rid = ev.get("RECURRENCE-ID")
        attendees = ev.get("ATTENDEE")
        attendees = attendees if isinstance(attendees, list) else ([attendees] if attendees is not None else [])
        events.append({
            "uid": str(ev.get("UID")),
            "sequence": int(ev.get("SEQUENCE", 0)),
            "status": str(ev.get("STATUS", "")),
            "summary": str(ev.get("SUMMARY", "")),
            "dtstart": start.dt.strftime("%Y%m%dT%H%M%S") if start is not None else None,
            "dtstart_utc": start.dt.astimezone(__import__("datetime").timezone.utc).strftime("%Y%m%dT%H%M%SZ") if start is not None and getattr(start.dt, "tzinfo", None) else None,
            "tzid": tzid,
            "rrule": ev.get("RRULE").to_ical().decode() if ev.get("RRULE") is not None else None,
            "exdate": exdates,
            "recurrence_id": rid.dt.strftime("%Y%m%dT%H%M%S") if rid is not None else None,
            "attendees": [
                {"email": str(a).lower().removeprefix("mailto:"), "partstat": a.params.get("PARTSTAT"), "rsvp": a.params.get("RSVP")}
                for a in attendees
            ],
            "organizer": str(ev.get("ORGANIZER", "")).lower().removeprefix("mailto:"),
        })
    return {
        "method": str(cal.get("METHOD", "")),
        "timezones": zones,
        "observances": observances,
        "events": events,
    }


if __name__ == "__main__":
    print(json.dumps([check(p) for p in sys.argv[1:]]))
