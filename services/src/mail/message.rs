//! What a workflow sends: an [`Email`] with a text part, an optional HTML part and
//! attachments; address validation; the deterministic `Message-ID`.

use lettre::message::header::ContentType;
use lettre::message::{Attachment as MimeAttachment, Mailbox, MultiPart, SinglePart};
use lettre::Message;
use sha2::{Digest, Sha256};

use super::template::Rendered;
use super::MailError;

/// RFC 5321 §4.5.3.1: the longest path a server must accept, and the longest local part.
const MAX_ADDRESS_LEN: usize = 254;
const MAX_LOCAL_PART_LEN: usize = 64;

/// A message to send. Addresses are kept as written and validated when the message is
/// sent, so building one never fails; [`Mailer::send`](super::Mailer::send) reports the
/// first invalid address as a fatal error before anything is recorded or sent.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Email {
    pub from: Option<String>,
    pub to: Vec<String>,
    pub cc: Vec<String>,
    pub bcc: Vec<String>,
    pub reply_to: Option<String>,
    pub subject: String,
    pub text: String,
    pub html: Option<String>,
    /// An iTIP calendar (RFC 6047): an inline `text/calendar` alternative that calendar
    /// clients show with Accept/Decline, plus the same as an `invite.ics` attachment.
    pub calendar: Option<Calendar>,
    pub attachments: Vec<Attachment>,
}

/// A calendar carried by an [`Email`]: its iTIP method (`REQUEST`, `CANCEL`) and the
/// VCALENDAR text, whose `METHOD` must be the same.
#[derive(Debug, Clone, PartialEq)]
pub struct Calendar {
    pub method: String,
    pub body: String,
}

impl Email {
    pub fn new() -> Self {
        Self::default()
    }

    /// The sender; without one the mailer's default sender (`WAYMARK_MAIL_FROM`) is used.
    pub fn from(mut self, mailbox: impl Into<String>) -> Self {
        self.from = Some(mailbox.into());
        self
    }

    /// Adds a recipient: `ada@example.com` or `Ada Lovelace <ada@example.com>`.
    pub fn to(mut self, mailbox: impl Into<String>) -> Self {
        self.to.push(mailbox.into());
        self
    }

    pub fn cc(mut self, mailbox: impl Into<String>) -> Self {
        self.cc.push(mailbox.into());
        self
    }

    /// Adds a recipient who receives the message but appears in no header.
    pub fn bcc(mut self, mailbox: impl Into<String>) -> Self {
        self.bcc.push(mailbox.into());
        self
    }

    pub fn reply_to(mut self, mailbox: impl Into<String>) -> Self {
        self.reply_to = Some(mailbox.into());
        self
    }

    pub fn subject(mut self, subject: impl Into<String>) -> Self {
        self.subject = subject.into();
        self
    }

    /// The plain-text part, which every message has.
    pub fn text(mut self, text: impl Into<String>) -> Self {
        self.text = text.into();
        self
    }

    /// The HTML part, sent as an alternative to the text part.
    pub fn html(mut self, html: impl Into<String>) -> Self {
        self.html = Some(html.into());
        self
    }

    /// Subject, text and HTML from a rendered template.
    pub fn content(mut self, rendered: Rendered) -> Self {
        self.subject = rendered.subject;
        self.text = rendered.text;
        self.html = rendered.html;
        self
    }

    /// Carries an iTIP calendar: a `text/calendar; method=…; charset=UTF-8` alternative
    /// next to the text and HTML parts, and the same text as an `invite.ics` attachment.
    pub fn calendar(mut self, method: impl Into<String>, body: impl Into<String>) -> Self {
        self.calendar = Some(Calendar {
            method: method.into(),
            body: body.into(),
        });
        self
    }

    pub fn attach(mut self, attachment: Attachment) -> Self {
        self.attachments.push(attachment);
        self
    }

    /// Every envelope recipient (to, cc and bcc), as written.
    pub fn recipients(&self) -> impl Iterator<Item = &str> {
        self.to
            .iter()
            .chain(&self.cc)
            .chain(&self.bcc)
            .map(String::as_str)
    }
}

/// A file attached to a message.
#[derive(Debug, Clone, PartialEq)]
pub struct Attachment {
    pub filename: String,
    /// A MIME type with optional parameters: `application/pdf`,
    /// `text/calendar; charset=utf-8; method=REQUEST`.
    pub content_type: String,
    pub body: Vec<u8>,
}

impl Attachment {
    pub fn new(
        filename: impl Into<String>,
        content_type: impl Into<String>,
        body: impl Into<Vec<u8>>,
    ) -> Self {
        Self {
            filename: filename.into(),
            content_type: content_type.into(),
            body: body.into(),
        }
    }
}

/// Checks one address (`ada@example.com` or `Ada <ada@example.com>`) and parses it.
/// `field` names where it came from in the error (`to`, `from`…).
pub fn parse_mailbox(field: &'static str, value: &str) -> Result<Mailbox, MailError> {
    let invalid = |reason: &str| MailError::InvalidAddress {
        field,
        value: value.to_owned(),
        reason: reason.to_owned(),
    };
    if value.trim().is_empty() {
        return Err(invalid("it is empty"));
    }
    // A line break in an address is a header-injection attempt, not a typo.
    if value.chars().any(char::is_control) {
        return Err(invalid("it contains a control character"));
    }
    let mailbox: Mailbox = value.trim().parse().map_err(|e| invalid(&format!("{e}")))?;
    let address: &str = mailbox.email.as_ref();
    if address.len() > MAX_ADDRESS_LEN {
        return Err(invalid("the address is longer than 254 characters"));
    }
    if mailbox.email.user().len() > MAX_LOCAL_PART_LEN {
        return Err(invalid("the part before @ is longer than 64 characters"));
    }
    Ok(mailbox)
}

/// The `Message-ID` of the message sent under idempotency key `key` from `domain`:
/// the same for every attempt of one step visit, so a receiver can recognise a
/// duplicate, and unrelated across keys. The key is hashed so that run ids do not leak
/// into mail headers and any key (colons included) yields a valid id.
pub fn message_id(key: &str, domain: &str) -> String {
    let digest = Sha256::digest(key.as_bytes());
    format!("<{}.waymark@{domain}>", hex::encode(&digest[..16]))
}

/// A message checked and ready for a transport.
#[derive(Debug, Clone)]
pub(crate) struct Prepared {
    pub message: Message,
    pub message_id: String,
    pub recipients: Vec<String>,
    pub subject: String,
}

/// Validates `email` and builds the MIME message with the given `Message-ID`.
pub(crate) fn prepare(
    email: &Email,
    default_from: &Mailbox,
    message_id_for: impl FnOnce(&Mailbox) -> String,
) -> Result<Prepared, MailError> {
    let from = match &email.from {
        Some(from) => parse_mailbox("from", from)?,
        None => default_from.clone(),
    };
    let mut builder = Message::builder().from(from.clone());
    let mut recipients = Vec::new();
    for value in &email.to {
        let mailbox = parse_mailbox("to", value)?;
        recipients.push(mailbox.email.to_string());
        builder = builder.to(mailbox);
    }
    for value in &email.cc {
        let mailbox = parse_mailbox("cc", value)?;
        recipients.push(mailbox.email.to_string());
        builder = builder.cc(mailbox);
    }
    for value in &email.bcc {
        let mailbox = parse_mailbox("bcc", value)?;
        recipients.push(mailbox.email.to_string());
        builder = builder.bcc(mailbox);
    }
    if recipients.is_empty() {
        return Err(MailError::InvalidMessage(
            "a message needs at least one recipient (to, cc or bcc)".into(),
        ));
    }
    if let Some(reply_to) = &email.reply_to {
        builder = builder.reply_to(parse_mailbox("reply_to", reply_to)?);
    }
    // A subject rendered from a template may end in a newline; a header cannot hold one.
    let subject = email
        .subject
        .split(['\r', '\n'])
        .map(str::trim)
        .filter(|line| !line.is_empty())
        .collect::<Vec<_>>()
        .join(" ");
    let message_id = message_id_for(&from);
    builder = builder
        .subject(subject.clone())
        .message_id(Some(message_id.clone()))
        .date_now();

    let text = SinglePart::plain(email.text.clone());
    let built = match (&email.html, email.attachments.as_slice(), &email.calendar) {
        (None, [], None) => builder.singlepart(text),
        (html, attachments, calendar) => {
            let mut body = match (html, calendar) {
                (Some(html), None) => {
                    let alternative =
                        MultiPart::alternative_plain_html(email.text.clone(), html.clone());
                    if attachments.is_empty() {
                        alternative
                    } else {
                        MultiPart::mixed().multipart(alternative)
                    }
                }
                (None, None) => MultiPart::mixed().singlepart(text),
                (html, Some(calendar)) => {
                    // The layout calendar services send (RFC 6047 §2.4): the calendar
                    // as the last alternative, which calendar-aware clients render,
                    // and as a file for the others.
                    let method = calendar.method.to_ascii_uppercase();
                    if !method.chars().all(|c| c.is_ascii_alphabetic()) || method.is_empty() {
                        return Err(MailError::InvalidMessage(format!(
                            "calendar method {:?} is not an iTIP method",
                            calendar.method
                        )));
                    }
                    let inline = ContentType::parse(&format!(
                        "text/calendar; method={method}; charset=UTF-8"
                    ))
                    .map_err(|e| MailError::InvalidMessage(e.to_string()))?;
                    let file = ContentType::parse("application/ics; name=\"invite.ics\"")
                        .map_err(|e| MailError::InvalidMessage(e.to_string()))?;
                    let mut alternative = MultiPart::alternative().singlepart(text);
                    if let Some(html) = html {
                        alternative = alternative.singlepart(SinglePart::html(html.clone()));
                    }
                    alternative = alternative.singlepart(
                        SinglePart::builder()
                            .header(inline)
                            .body(calendar.body.clone()),
                    );
                    MultiPart::mixed().multipart(alternative).singlepart(
                        MimeAttachment::new("invite.ics".into())
                            .body(calendar.body.clone().into_bytes(), file),
                    )
                }
            };
            for attachment in attachments {
                let content_type = ContentType::parse(&attachment.content_type).map_err(|e| {
                    MailError::InvalidMessage(format!(
                        "attachment {:?} has an invalid content type {:?}: {e}",
                        attachment.filename, attachment.content_type
                    ))
                })?;
                body = body.singlepart(
                    MimeAttachment::new(attachment.filename.clone())
                        .body(attachment.body.clone(), content_type),
                );
            }
            builder.multipart(body)
        }
    };
    let message = built.map_err(|e| MailError::InvalidMessage(e.to_string()))?;
    Ok(Prepared {
        message,
        message_id,
        recipients,
        subject,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sender() -> Mailbox {
        "Waymark <waymark@example.com>".parse().unwrap()
    }

    #[test]
    fn addresses_with_and_without_names_are_accepted() {
        let plain = parse_mailbox("to", "ada@example.com").unwrap();
        assert_eq!(plain.email.to_string(), "ada@example.com");
        let named = parse_mailbox("to", " Ada Lovelace <ada@example.com> ").unwrap();
        assert_eq!(named.name.as_deref(), Some("Ada Lovelace"));
        assert_eq!(named.email.domain(), "example.com");
    }

    #[test]
    fn invalid_addresses_are_refused_with_the_field_and_value() {
        for bad in [
            "",
            "   ",
            "no-at-sign",
            "two@@example.com",
            "ada@",
            "@example.com",
            "ada@exa mple.com",
            "ada@example.com\r\nBcc: victim@example.com",
            "Ada <ada@example.com",
        ] {
            match parse_mailbox("to", bad) {
                Err(MailError::InvalidAddress { field, value, .. }) => {
                    assert_eq!(field, "to");
                    assert_eq!(value, bad);
                }
                other => panic!("{bad:?} was not refused: {other:?}"),
            }
        }
        let long_local = format!("{}@example.com", "a".repeat(65));
        assert!(parse_mailbox("cc", &long_local).is_err());
        let long = format!("a@{}.com", "b".repeat(260));
        assert!(parse_mailbox("cc", &long).is_err());
    }

    #[test]
    fn message_id_is_stable_per_key_and_differs_between_keys() {
        let key = "0191c7a2-7b1e-7c3d-8e4f-123456789abc:1:0";
        let id = message_id(key, "example.com");
        assert_eq!(id, message_id(key, "example.com"), "same key, same id");
        assert_ne!(
            id,
            message_id("0191c7a2-7b1e-7c3d-8e4f-123456789abc:2:0", "example.com")
        );
        assert_ne!(
            id,
            message_id("0191c7a2-7b1e-7c3d-8e4f-123456789abc:1:1", "example.com")
        );
        assert!(
            id.starts_with('<') && id.ends_with(".waymark@example.com>"),
            "{id}"
        );
        // 32 hex characters, no colons: valid as the left side of a msg-id.
        let left = &id[1..id.find('.').unwrap()];
        assert_eq!(left.len(), 32);
        assert!(left.chars().all(|c| c.is_ascii_hexdigit()));
    }

    #[test]
    fn a_calendar_is_an_inline_alternative_and_an_invite_ics_attachment() {
        let ics = "BEGIN:VCALENDAR\r\nMETHOD:REQUEST\r\nEND:VCALENDAR\r\n";
        let email = Email::new()
            .to("ada@example.com")
            .subject("Invitation")
            .text("plain body")
            .html("<p>html body</p>")
            .calendar("REQUEST", ics);
        let prepared = prepare(&email, &sender(), |_| "<a@b>".into()).unwrap();
        let raw = prepared.message.formatted();
        let parsed = mail_parser::MessageParser::default().parse(&raw).unwrap();
        let raw = String::from_utf8(raw.clone()).unwrap();
        assert!(raw.contains("multipart/mixed"), "{raw}");
        assert!(raw.contains("multipart/alternative"), "{raw}");
        assert!(
            // Parameter values are case-insensitive; lettre writes the charset lowercase.
            raw.to_ascii_lowercase()
                .contains("text/calendar; method=request; charset=utf-8"),
            "{raw}"
        );
        assert!(raw.contains("invite.ics"), "{raw}");
        assert_eq!(parsed.body_text(0).as_deref(), Some("plain body"));
        let calendars: Vec<_> = parsed
            .parts
            .iter()
            .filter(|p| {
                use mail_parser::MimeHeaders;
                p.content_type()
                    .is_some_and(|c| c.subtype().is_some_and(|s| s == "calendar" || s == "ics"))
            })
            .map(|p| String::from_utf8_lossy(p.contents()).into_owned())
            .collect();
        assert_eq!(calendars, vec![ics.to_owned(), ics.to_owned()]);
        let bad = Email::new().to("ada@example.com").calendar("REQ;UEST", ics);
        assert!(prepare(&bad, &sender(), |_| "<a@b>".into()).is_err());
    }

    #[test]
    fn a_message_needs_a_recipient_and_valid_attachments() {
        let err = prepare(&Email::new().subject("x"), &sender(), |_| "<a@b>".into()).unwrap_err();
        assert!(matches!(err, MailError::InvalidMessage(_)), "{err:?}");
        let email = Email::new().to("ada@example.com").attach(Attachment::new(
            "a.bin",
            "not a type",
            b"x".to_vec(),
        ));
        let err = prepare(&email, &sender(), |_| "<a@b>".into()).unwrap_err();
        assert!(matches!(err, MailError::InvalidMessage(_)), "{err:?}");
    }

    #[test]
    fn prepared_message_carries_the_derived_id_parts_and_envelope() {
        let email = Email::new()
            .to("Ada <ada@example.com>")
            .bcc("audit@example.com")
            .subject("Hello\nthere\n")
            .text("plain body")
            .html("<p>html body</p>")
            .attach(Attachment::new(
                "invite.ics",
                "text/calendar; charset=utf-8; method=REQUEST",
                b"BEGIN:VCALENDAR\r\nEND:VCALENDAR\r\n".to_vec(),
            ));
        let prepared = prepare(&email, &sender(), |from| {
            message_id("run:1:0", from.email.domain())
        })
        .unwrap();
        assert_eq!(prepared.subject, "Hello there");
        assert_eq!(
            prepared.recipients,
            vec!["ada@example.com".to_owned(), "audit@example.com".to_owned()]
        );
        let raw = String::from_utf8(prepared.message.formatted()).unwrap();
        assert!(raw.contains(&format!(
            "Message-ID: {}",
            message_id("run:1:0", "example.com")
        )));
        assert!(raw.contains("multipart/alternative"));
        assert!(raw.contains("text/calendar"));
        assert!(
            !raw.contains("audit@example.com"),
            "Bcc stays out of the headers"
        );
    }
}
