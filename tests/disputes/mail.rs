//! The merchant's emails, read back from the real SMTP test server.
