//! Reading what a calendar client sends back (`METHOD:REPLY`), and writing such a
//! reply for tests and tooling.

use chrono::{DateTime, NaiveDateTime, Utc};

use super::{line, mailto, utc_fmt, PartStat};

/// One content line: name, parameters, value (still escaped).
#[derive(Debug, Clone, PartialEq)]
pub struct ContentLine {
    pub name: String,
    pub params: Vec<(String, String)>,
    pub value: String,
}

impl ContentLine {
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Unfolds and splits iCalendar text into content lines (CRLF or LF, folded with a
/// space or tab; quoted parameter values may hold `:` and `;`).
pub fn content_lines(text: &str) -> Vec<ContentLine> {
    let mut unfolded: Vec<String> = Vec::new();
    for raw in text.split('\n') {
        let raw = raw.strip_suffix('\r').unwrap_or(raw);
        if let Some(rest) = raw.strip_prefix([' ', '\t']) {
            if let Some(last) = unfolded.last_mut() {
                last.push_str(rest);
                continue;
            }
        }
        if !raw.is_empty() {
            unfolded.push(raw.to_owned());
        }
    }
    unfolded.iter().filter_map(|l| parse_line(l)).collect()
}

fn parse_line(l: &str) -> Option<ContentLine> {
    // Split at the first ':' outside quotes; parameters at ';' outside quotes.
    let mut quoted = false;
    let mut parts: Vec<String> = vec![String::new()];
    let mut value = None;
    for (i, c) in l.char_indices() {
        match c {
            '"' => quoted = !quoted,
            ';' if !quoted => {
                parts.push(String::new());
                continue;
            }
            ':' if !quoted => {
                value = Some(l[i + 1..].to_owned());
                break;
            }
            _ => {}
        }
        if c != '"' {
            parts.last_mut()?.push(c);
        }
    }
    let value = value?;
    let name = parts.remove(0).to_ascii_uppercase();
    let params = parts
        .into_iter()
        .filter_map(|p| {
            let (k, v) = p.split_once('=')?;
            Some((k.to_ascii_uppercase(), v.to_owned()))
        })
        .collect();
    Some(ContentLine {
        name,
        params,
        value,
    })
}

/// A calendar client's answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    pub uid: String,
    pub sequence: i64,
    pub attendee: String,
    pub partstat: PartStat,
    /// Set when the answer is for one occurrence (its local `RECURRENCE-ID`).
    pub recurrence_id: Option<NaiveDateTime>,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ReplyError {
    #[error("not an iCalendar REPLY: {0}")]
    Invalid(String),
}

/// Parses a `METHOD:REPLY` calendar: the event's UID and SEQUENCE and its one
/// ATTENDEE's PARTSTAT.
pub fn parse_reply(text: &str) -> Result<Reply, ReplyError> {
    let lines = content_lines(text);
    let invalid = |m: &str| ReplyError::Invalid(m.to_owned());
    if !lines
        .iter()
        .any(|l| l.name == "BEGIN" && l.value.eq_ignore_ascii_case("VCALENDAR"))
    {
        return Err(invalid("no BEGIN:VCALENDAR"));
    }
    let method = lines
        .iter()
        .find(|l| l.name == "METHOD")
        .map(|l| l.value.trim().to_ascii_uppercase());
    if method.as_deref() != Some("REPLY") {
        return Err(invalid(&format!(
            "METHOD is {}, expected REPLY",
            method.as_deref().unwrap_or("missing")
        )));
    }
    let mut in_event = false;
    let (mut uid, mut sequence, mut attendee, mut recurrence_id) = (None, 0, None, None);
    for l in &lines {
        match (l.name.as_str(), in_event) {
            ("BEGIN", _) if l.value.eq_ignore_ascii_case("VEVENT") => in_event = true,
            ("END", true) if l.value.eq_ignore_ascii_case("VEVENT") => break,
            ("UID", true) => uid = Some(l.value.trim().to_owned()),
            ("SEQUENCE", true) => sequence = l.value.trim().parse().unwrap_or(0),
            ("RECURRENCE-ID", true) => {
                let v = l.value.trim().trim_end_matches('Z');
                recurrence_id = NaiveDateTime::parse_from_str(v, "%Y%m%dT%H%M%S").ok();
            }
            ("ATTENDEE", true) => attendee = Some(l.clone()),
            _ => {}
        }
    }
    let uid = uid.ok_or_else(|| invalid("the VEVENT has no UID"))?;
    let attendee = attendee.ok_or_else(|| invalid("the VEVENT has no ATTENDEE"))?;
    let email = attendee
        .value
        .trim()
        .trim_start_matches("mailto:")
        .trim_start_matches("MAILTO:")
        .to_owned();
    let partstat = attendee
        .param("PARTSTAT")
        .and_then(PartStat::parse)
        .ok_or_else(|| invalid("the ATTENDEE has no PARTSTAT"))?;
    Ok(Reply {
        uid,
        sequence,
        attendee: email,
        partstat,
        recurrence_id,
    })
}

/// Writes the REPLY a calendar client would send (for tests and tooling).
pub fn reply(
    uid: &str,
    sequence: i64,
    attendee: &str,
    partstat: PartStat,
    now: DateTime<Utc>,
) -> String {
    let mut out = String::new();
    for l in [
        "BEGIN:VCALENDAR".to_owned(),
        "VERSION:2.0".into(),
        "PRODID:-//Waymark//Meetings//EN".into(),
        "METHOD:REPLY".into(),
        "BEGIN:VEVENT".into(),
        format!("UID:{uid}"),
        format!("SEQUENCE:{sequence}"),
        format!("DTSTAMP:{}", utc_fmt(now)),
        format!("ATTENDEE;PARTSTAT={}:{}", partstat.ical(), mailto(attendee)),
        "END:VEVENT".into(),
        "END:VCALENDAR".into(),
    ] {
        line(&mut out, &l);
    }
    out
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 2, 1, 12, 0, 0).unwrap()
    }

    #[test]
    fn a_reply_is_parsed_back_with_folding_and_quoted_parameters() {
        let text =
            "BEGIN:VCALENDAR\r\nMETHOD:REPLY\r\nBEGIN:VEVENT\r\nUID:m-1@waymark\r\nSEQUENCE:4\r\n\
                    ATTENDEE;CN=\"Lovelace, Ada\";PARTSTAT=ACCEPTED:mai\r\n lto:ada@example.com\r\n\
                    END:VEVENT\r\nEND:VCALENDAR\r\n";
        let reply = parse_reply(text).unwrap();
        assert_eq!(reply.uid, "m-1@waymark");
        assert_eq!(reply.sequence, 4);
        assert_eq!(reply.attendee, "ada@example.com");
        assert_eq!(reply.partstat, PartStat::Accepted);
        let ours = super::reply("u", 1, "b@example.com", PartStat::Declined, now());
        assert_eq!(parse_reply(&ours).unwrap().partstat, PartStat::Declined);
        assert!(parse_reply("BEGIN:VCALENDAR\r\nMETHOD:REQUEST\r\nEND:VCALENDAR").is_err());
        assert!(parse_reply("hello").is_err());
    }
}
