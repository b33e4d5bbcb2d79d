//! IMAP and SMTP command injection: a line break followed by a protocol command line, so
//! that a value a webmail or mailer passes to its server (a mailbox name, a message id, a
//! recipient) runs commands of its own.
//!
//! IMAP (RFC 9051): `tag SP command [SP arguments]`, where the tag is an atom
//! (`a1`, `A001`, `x`: a letter, and a digit unless it is short; "1 select the file" is a
//! numbered step) and the command one of the protocol's, with arguments if it takes them. SMTP (RFC 5321): `MAIL
//! FROM:`, `RCPT TO:` with a path, `HELO`/`EHLO` with a domain, `VRFY`/`EXPN` with one
//! word, `AUTH` with a mechanism, or `DATA`/`RSET`/`QUIT`/`NOOP` alone on their line.
//! Commands only count on a new line: "quit smoking" in the middle of a text is prose,
//! and so is a line "Data is attached" (DATA stands alone on its line).

use super::{new_lines, Detection};

const IMAP: &[&[u8]] = &[
    b"login",
    b"logout",
    b"select",
    b"examine",
    b"create",
    b"delete",
    b"rename",
    b"subscribe",
    b"unsubscribe",
    b"list",
    b"lsub",
    b"status",
    b"append",
    b"check",
    b"close",
    b"expunge",
    b"search",
    b"fetch",
    b"store",
    b"copy",
    b"move",
    b"uid",
    b"capability",
    b"noop",
    b"authenticate",
    b"starttls",
    b"idle",
    b"getquota",
    b"setacl",
    b"getacl",
];

fn word(s: &[u8]) -> &[u8] {
    let len = s.iter().take_while(|b| !b.is_ascii_whitespace()).count();
    &s[..len]
}

/// The command line at the start of `line` (up to the next break), if it is one.
fn command_line(line: &[u8]) -> Option<&'static str> {
    let end = line
        .iter()
        .position(|b| matches!(b, b'\r' | b'\n'))
        .unwrap_or(line.len());
    let line = line[..end].trim_ascii_end();
    let lower = line.to_ascii_lowercase();
    let first = word(&lower);
    let rest = lower[first.len()..].trim_ascii_start();
    let second = word(rest);
    let args = rest[second.len()..].trim_ascii_start();
    // SMTP.
    let smtp = match first {
        b"mail" => rest.starts_with(b"from:"),
        b"rcpt" => rest.starts_with(b"to:"),
        b"helo" | b"ehlo" => !second.is_empty() && args.is_empty() && second.contains(&b'.'),
        b"vrfy" | b"expn" => !second.is_empty() && args.is_empty(),
        b"auth" => matches!(second, b"login" | b"plain" | b"cram-md5" | b"xoauth2"),
        b"data" | b"rset" | b"quit" | b"noop" | b"starttls" => rest.is_empty(),
        _ => false,
    };
    if smtp {
        return Some("a line break followed by an SMTP command");
    }
    // IMAP: an atom tag, then a command.
    let tag_ok = !first.is_empty()
        && first.len() <= 16
        && first
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'*'))
        && first.iter().any(u8::is_ascii_alphabetic)
        && (first.iter().any(u8::is_ascii_digit) || first.len() <= 2);
    if tag_ok && IMAP.contains(&second) {
        let needs_args = !matches!(
            second,
            b"logout"
                | b"capability"
                | b"noop"
                | b"check"
                | b"close"
                | b"expunge"
                | b"starttls"
                | b"idle"
        );
        if needs_args != args.is_empty() {
            return Some("a line break followed by an IMAP command");
        }
    }
    None
}

/// Finds a mail protocol command on a new line of `input` (the `decoded` form).
pub fn detect(input: &[u8]) -> Option<Detection> {
    for (brk, line) in new_lines(input) {
        if line >= input.len() {
            continue;
        }
        if let Some(why) = command_line(&input[line..]) {
            let len = input[line..]
                .iter()
                .position(|b| matches!(b, b'\r' | b'\n'))
                .unwrap_or(input.len() - line);
            return Some(Detection {
                at: brk,
                len: line + len - brk,
                why,
            });
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::waf::detect::expect;

    #[test]
    fn command_lines_after_a_break_are_found() {
        expect::finds(
            detect,
            &[
                "INBOX\r\na1 CREATE evil",
                "1\r\nA001 LOGIN admin secret",
                "x\r\nZ9 FETCH 1:* (BODY[])",
                "inbox\na2 DELETE INBOX",
                "x\r\nA3 LOGOUT",
                "me@example.com\r\nRCPT TO:<victim@example.com>",
                "a\r\nMAIL FROM:<x@evil.example>\r\nDATA\r\nhi\r\n.\r\nQUIT",
                "x\r\nVRFY root",
                "x\r\nHELO evil.example",
                "x\nDATA",
            ],
        );
    }

    #[test]
    fn lines_of_prose_are_left_alone() {
        expect::passes(
            detect,
            &[
                "Hi,\nData is attached",
                "I want to\nquit smoking",
                "Steps:\n1 select the file\n2 copy it",
                "list:\nmilk, eggs",
                "Thanks\nTom",
                "Order 12\nStatus: shipped",
                "quit",
            ],
        );
    }

    #[test]
    fn hostile_input_is_bounded() {
        expect::bounded(
            detect,
            &[
                "\n".repeat(100_000),
                "\n ".repeat(50_000),
                "\na1 ".repeat(30_000),
            ],
        );
    }
}
