//! Message templates (minijinja): a subject, a text body and an optional HTML body per
//! template name, rendered from one serialisable context.

use serde::Serialize;

use super::MailError;

/// A set of named message templates. Build it once (workflows keep it next to their
/// [`Mailer`](super::Mailer)) and render per message.
///
/// Each part is a minijinja (Jinja2) template. The HTML part escapes every value
/// (`{{ name }}` of `<b>` renders `&lt;b&gt;`); subject and text do not. A variable the
/// context lacks is an error rather than an empty string, so a renamed field cannot
/// silently send customers a blank.
#[derive(Debug, Clone)]
pub struct Templates {
    env: minijinja::Environment<'static>,
}

/// A rendered template: what [`Email::content`](super::Email::content) takes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    pub subject: String,
    pub text: String,
    pub html: Option<String>,
}

impl Default for Templates {
    fn default() -> Self {
        Self::new()
    }
}

impl Templates {
    pub fn new() -> Self {
        let mut env = minijinja::Environment::new();
        env.set_undefined_behavior(minijinja::UndefinedBehavior::Strict);
        // Escaping follows the template's suffix (see `part`): only `.html` escapes.
        env.set_auto_escape_callback(|name| {
            if name.ends_with(".html") {
                minijinja::AutoEscape::Html
            } else {
                minijinja::AutoEscape::None
            }
        });
        Self { env }
    }

    /// Adds template `name`. Fails on a syntax error, naming the part.
    pub fn add(
        &mut self,
        name: &str,
        subject: &str,
        text: &str,
        html: Option<&str>,
    ) -> Result<&mut Self, MailError> {
        let mut parts = vec![("subject.txt", subject), ("txt", text)];
        if let Some(html) = html {
            parts.push(("html", html));
        }
        for (suffix, source) in parts {
            let part = part(name, suffix);
            self.env
                .add_template_owned(part.clone(), source.to_owned())
                .map_err(|source| MailError::Template { name: part, source })?;
        }
        Ok(self)
    }

    /// Renders template `name` with `context` (any `Serialize` value, usually a struct
    /// or `serde_json::json!`).
    pub fn render(&self, name: &str, context: impl Serialize) -> Result<Rendered, MailError> {
        let context = minijinja::Value::from_serialize(&context);
        let render = |suffix: &str| -> Result<Option<String>, MailError> {
            let part = part(name, suffix);
            match self.env.get_template(&part) {
                Ok(template) => template
                    .render(&context)
                    .map(Some)
                    .map_err(|source| MailError::Template { name: part, source }),
                Err(e) if e.kind() == minijinja::ErrorKind::TemplateNotFound => Ok(None),
                Err(source) => Err(MailError::Template { name: part, source }),
            }
        };
        let subject = render("subject.txt")?.ok_or_else(|| {
            MailError::InvalidMessage(format!("there is no mail template named {name:?}"))
        })?;
        Ok(Rendered {
            subject,
            text: render("txt")?.unwrap_or_default(),
            html: render("html")?,
        })
    }
}

fn part(name: &str, suffix: &str) -> String {
    format!("{name}.{suffix}")
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn templates() -> Templates {
        let mut templates = Templates::new();
        templates
            .add(
                "welcome",
                "Welcome, {{ name }}",
                "Hello {{ name }},\n{% for item in items %}- {{ item }}\n{% endfor %}",
                Some("<p>Hello {{ name }}</p>"),
            )
            .unwrap();
        templates
    }

    #[test]
    fn renders_all_parts_and_escapes_only_html() {
        let rendered = templates()
            .render("welcome", json!({ "name": "<Ada>", "items": ["a", "b"] }))
            .unwrap();
        assert_eq!(rendered.subject, "Welcome, <Ada>");
        assert_eq!(rendered.text, "Hello <Ada>,\n- a\n- b\n");
        assert_eq!(rendered.html.as_deref(), Some("<p>Hello &lt;Ada&gt;</p>"));
    }

    #[test]
    fn a_missing_variable_is_an_error_not_a_blank() {
        let err = templates()
            .render("welcome", json!({ "items": [] }))
            .unwrap_err();
        assert!(
            matches!(&err, MailError::Template { name, .. } if name == "welcome.subject.txt"),
            "{err:?}"
        );
    }

    #[test]
    fn unknown_templates_and_syntax_errors_are_reported() {
        assert!(matches!(
            templates().render("nope", json!({})),
            Err(MailError::InvalidMessage(_))
        ));
        let mut templates = Templates::new();
        let err = templates.add("broken", "ok", "{% if %}", None).unwrap_err();
        assert!(matches!(&err, MailError::Template { name, .. } if name == "broken.txt"));
    }
}
