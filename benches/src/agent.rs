//! Coding-agent requests, the mission's largest traffic: a system prompt, tool definitions,
//! and a conversation whose tool results hold source files, in the OpenAI chat shape
//! (`/v1/chat/completions`) and the Anthropic messages shape (`/v1/messages`).
//!
//! The criterion benches judge them in process; the load run (`benches/load/run.py`) writes
//! them with the `agent_request` example and sends them through the proxies. Deterministic:
//! one seed, one body, so runs compare.

use serde_json::{json, Value};

/// Which API shape a request takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    OpenAi,
    Anthropic,
}

/// An agent request of about `size` bytes (never under it by more than one tool result).
pub fn request(shape: Shape, size: usize) -> Vec<u8> {
    conversation(shape, size, 0)
}

/// Another conversation of the same shape and size for each `seed` (0 is [`request`]'s):
/// other files, paths and call ids, the same tools and system prompt. A run over many of
/// them shows what the WAF costs when it has not seen a conversation before.
pub fn conversation(shape: Shape, size: usize, seed: u64) -> Vec<u8> {
    let mut words = Words(0x5eed_cafe_f00d_d00d);
    let tools: Vec<Tool> = TOOLS.iter().map(|t| Tool::new(t, &mut words)).collect();
    let call_prefix = match seed {
        0 => String::from("call_"),
        s => {
            words = Words(words.0 ^ s.wrapping_mul(0x9e37_79b9_7f4a_7c15));
            format!("call_{s:x}_")
        }
    };
    let mut turns = Vec::new();
    let mut bytes = SYSTEM.len()
        + tools
            .iter()
            .map(|t| t.description.len() + 200)
            .sum::<usize>();
    let mut n = 0;
    while bytes < size {
        let file = source_file(&mut words, n);
        let path = format!(
            "src/{}/{}.{}",
            words.pick(MODULES),
            words.pick(NOUNS),
            file.1
        );
        // As JSON: the text escaped, the turn's two messages around it.
        bytes += Value::from(file.0.as_str()).to_string().len() + 2 * path.len() + 250;
        turns.push((format!("{call_prefix}{n:04}"), path, file.0));
        n += 1;
    }
    let body = match shape {
        Shape::OpenAi => openai(&tools, &turns),
        Shape::Anthropic => anthropic(&tools, &turns),
    };
    body.to_string().into_bytes()
}

/// `base` (an OpenAI-shaped request from [`request`] or [`conversation`]) with one turn
/// more, as an agent's next request: a tool call and its result, a source file no other
/// turn holds (`n` draws it). `None` if `base` is not of that shape.
pub fn next_turn(base: &[u8], n: u64) -> Option<Vec<u8>> {
    // The messages come first (keys in order) and end where the model's key starts: a
    // string's quotes are escaped, so these bytes are the array's end and nothing else.
    let end = base.windows(10).rposition(|w| w == br#"],"model":"#)?;
    let mut words = Words(0x0dd5_eed5 ^ n.wrapping_mul(0x9e37_79b9_7f4a_7c15));
    let (text, ext) = source_file(&mut words, n as usize);
    let id = format!("call_next_{n}");
    let path = format!(
        "src/{}/{}_{n}.{ext}",
        words.pick(MODULES),
        words.pick(NOUNS)
    );
    let call = json!({ "role": "assistant", "content": null, "tool_calls": [
        { "id": id, "type": "function", "function": {
            "name": "read_file", "arguments": json!({ "path": path }).to_string() } } ] });
    let result = json!({ "role": "tool", "tool_call_id": id, "content": text });
    let mut body = base[..end].to_vec();
    for message in [call, result] {
        body.push(b',');
        body.extend_from_slice(message.to_string().as_bytes());
    }
    body.extend_from_slice(&base[end..]);
    Some(body)
}

const SYSTEM: &str = "You are a coding agent working in the user's repository. Read the files \
you need with the tools, keep changes small, run the tests after each change, and explain what \
you changed and why. Follow the project's style guide (https://example.com/style) and never \
commit secrets. When a command fails, read its output before trying again.";

struct Tool {
    name: &'static str,
    description: String,
    params: &'static [(&'static str, &'static str)],
}

impl Tool {
    fn new(spec: &(&'static str, &'static [(&'static str, &'static str)]), w: &mut Words) -> Self {
        Tool {
            name: spec.0,
            description: w.sentences(3),
            params: spec.1,
        }
    }

    fn schema(&self) -> Value {
        let properties: serde_json::Map<String, Value> = self
            .params
            .iter()
            .map(|(name, ty)| {
                let description = format!("The {name} to use ({ty}).");
                (
                    name.to_string(),
                    json!({ "type": ty, "description": description }),
                )
            })
            .collect();
        let required: Vec<&str> = self.params.iter().map(|p| p.0).take(1).collect();
        json!({ "type": "object", "properties": properties, "required": required })
    }
}

const TOOLS: &[(&str, &[(&str, &str)])] = &[
    (
        "read_file",
        &[
            ("path", "string"),
            ("offset", "integer"),
            ("limit", "integer"),
        ],
    ),
    ("write_file", &[("path", "string"), ("content", "string")]),
    (
        "edit_file",
        &[
            ("path", "string"),
            ("old_text", "string"),
            ("new_text", "string"),
        ],
    ),
    (
        "list_directory",
        &[("path", "string"), ("recursive", "boolean")],
    ),
    ("search_code", &[("pattern", "string"), ("glob", "string")]),
    (
        "run_command",
        &[("command", "string"), ("timeout_seconds", "integer")],
    ),
    ("run_tests", &[("filter", "string")]),
    ("git_diff", &[("staged", "boolean")]),
    ("fetch_docs", &[("url", "string")]),
    ("todo_write", &[("items", "array")]),
];

fn openai(tools: &[Tool], turns: &[(String, String, String)]) -> Value {
    let mut messages = vec![
        json!({ "role": "system", "content": SYSTEM }),
        json!({ "role": "user", "content": "The export job fails on large accounts; find out why and fix it." }),
    ];
    for (id, path, content) in turns {
        let arguments = json!({ "path": path }).to_string();
        messages.push(json!({ "role": "assistant", "content": null, "tool_calls": [
            { "id": id, "type": "function", "function": { "name": "read_file", "arguments": arguments } }
        ] }));
        messages.push(json!({ "role": "tool", "tool_call_id": id, "content": content }));
    }
    let tools: Vec<Value> = tools
        .iter()
        .map(|t| {
            json!({ "type": "function", "function": {
                "name": t.name, "description": t.description, "parameters": t.schema() } })
        })
        .collect();
    json!({ "model": "gpt-4o", "stream": true, "temperature": 0.2,
            "tool_choice": "auto", "tools": tools, "messages": messages })
}

fn anthropic(tools: &[Tool], turns: &[(String, String, String)]) -> Value {
    let mut messages = vec![json!({ "role": "user", "content": [
        { "type": "text", "text": "The export job fails on large accounts; find out why and fix it." }
    ] })];
    for (id, path, content) in turns {
        messages.push(json!({ "role": "assistant", "content": [
            { "type": "text", "text": format!("Reading {path}.") },
            { "type": "tool_use", "id": id, "name": "read_file", "input": { "path": path } }
        ] }));
        messages.push(json!({ "role": "user", "content": [
            { "type": "tool_result", "tool_use_id": id, "content": content }
        ] }));
    }
    let tools: Vec<Value> = tools
        .iter()
        .map(
            |t| json!({ "name": t.name, "description": t.description, "input_schema": t.schema() }),
        )
        .collect();
    json!({ "model": "claude-sonnet-4-5", "max_tokens": 8192, "stream": true,
            "system": [{ "type": "text", "text": SYSTEM }], "tools": tools, "messages": messages })
}

/// A source file as a read tool returns it: code in one of a few languages, with the
/// strings, queries, shell lines and links that real code holds. Returns (text, extension).
fn source_file(w: &mut Words, n: usize) -> (String, &'static str) {
    let mut out = String::new();
    let (lang, ext) = LANGUAGES[n % LANGUAGES.len()];
    let functions = 8 + w.below(16);
    for i in 0..functions {
        let name = format!("{}_{}", w.pick(VERBS), w.pick(NOUNS));
        let table = w.pick(NOUNS);
        let column = w.pick(NOUNS);
        let sentences = 1 + w.below(3);
        let doc = w.sentences(sentences);
        let line = match lang {
            Lang::Python => format!(
                "def {name}(session, {column}_id: int) -> list[dict]:\n    \"\"\"{doc}\"\"\"\n    \
                 rows = session.execute(\n        \"SELECT id, {column} FROM {table}s WHERE {column}_id = %s ORDER BY id LIMIT 100\",\n        \
                 ({column}_id,),\n    )\n    log.info(\"{name}: %d rows\", len(rows))  # see https://docs.example.org/{table}/{i}\n    \
                 return [dict(r) for r in rows if r[\"{column}\"] is not None]\n\n"
            ),
            Lang::Rust => format!(
                "/// {doc}\npub fn {name}(items: &[{ty}], limit: usize) -> Result<Vec<{ty}>, Error> {{\n    \
                 let mut out = Vec::with_capacity(items.len().min(limit));\n    for item in items.iter().filter(|i| i.{column} > 0) {{\n        \
                 if out.len() >= limit {{\n            return Err(Error::TooMany {{ limit }});\n        }}\n        out.push(item.clone());\n    }}\n    \
                 Ok(out) // {i}: <https://docs.rs/{table}/latest>\n}}\n\n",
                ty = capitalise(table)
            ),
            Lang::TypeScript => format!(
                "/** {doc} */\nexport async function {name}(client: Client, id: string): Promise<{ty}[]> {{\n  \
                 const res = await client.get(`/api/v1/{table}s/${{id}}/{column}?limit=${{LIMIT}}`);\n  \
                 if (!res.ok) throw new Error(`{name} failed: ${{res.status}}`);\n  \
                 return (await res.json()).items.filter((x: {ty}) => x.{column} !== undefined);\n}}\n\n",
                ty = capitalise(table)
            ),
            Lang::Shell => format!(
                "# {doc}\n{name}() {{\n  local dir=\"${{1:-./build}}\"\n  mkdir -p \"$dir/{table}\" && cd \"$dir\" || return 1\n  \
                 curl -fsSL \"https://downloads.example.com/{table}/{column}.tar.gz\" | tar -xz -C \"$dir/{table}\"\n  \
                 grep -rn '{column}' ./src | wc -l > \"$dir/{i}.count\"\n}}\n\n"
            ),
            Lang::Sql => format!(
                "-- {doc}\nCREATE TABLE IF NOT EXISTS {table}_{i} (\n  id BIGSERIAL PRIMARY KEY,\n  {column} TEXT NOT NULL,\n  \
                 created_at TIMESTAMPTZ DEFAULT now()\n);\nINSERT INTO {table}_{i} ({column}) SELECT {column} FROM {table}s WHERE id > 0;\n\
                 CREATE INDEX ON {table}_{i} (lower({column}));\n\n"
            ),
        };
        out.push_str(&line);
    }
    (out, ext)
}

#[derive(Clone, Copy)]
enum Lang {
    Python,
    Rust,
    TypeScript,
    Shell,
    Sql,
}

const LANGUAGES: &[(Lang, &str)] = &[
    (Lang::Python, "py"),
    (Lang::Rust, "rs"),
    (Lang::TypeScript, "ts"),
    (Lang::Python, "py"),
    (Lang::Shell, "sh"),
    (Lang::Rust, "rs"),
    (Lang::Sql, "sql"),
];

const MODULES: &[&str] = &[
    "export", "billing", "accounts", "storage", "jobs", "api", "auth", "reports",
];
const VERBS: &[&str] = &[
    "load", "fetch", "build", "parse", "merge", "render", "sync", "validate", "export", "count",
];
const NOUNS: &[&str] = &[
    "account", "invoice", "user", "order", "report", "batch", "record", "token", "event", "team",
    "project", "quota",
];
const PROSE: &[&str] = &[
    "the", "job", "reads", "each", "account", "in", "pages", "and", "writes", "rows", "to",
    "storage", "when", "a", "page", "fails", "it", "retries", "with", "backoff", "so", "large",
    "exports", "finish", "within", "limit", "of", "request", "returns", "list", "sorted", "by",
    "id",
];

fn capitalise(s: &str) -> String {
    let mut c = s.chars();
    c.next()
        .map_or_else(String::new, |f| f.to_uppercase().chain(c).collect())
}

/// A small deterministic generator (xorshift64*), so every run builds the same body.
struct Words(u64);

impl Words {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn pick<'a>(&mut self, from: &[&'a str]) -> &'a str {
        from[self.below(from.len())]
    }

    fn sentences(&mut self, n: usize) -> String {
        let mut out = String::new();
        for _ in 0..n {
            let len = 6 + self.below(10);
            let words: Vec<&str> = (0..len).map(|_| self.pick(PROSE)).collect();
            out.push_str(&capitalise(&words.join(" ")));
            out.push_str(". ");
        }
        out.pop();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_are_json_of_about_the_asked_size_and_repeatable() {
        for shape in [Shape::OpenAi, Shape::Anthropic] {
            for size in [256 * 1024, 1024 * 1024] {
                let body = request(shape, size);
                assert!(
                    body.len() >= size * 9 / 10,
                    "{shape:?} {size}: {}",
                    body.len()
                );
                assert!(
                    body.len() <= size * 11 / 10,
                    "{shape:?} {size}: {}",
                    body.len()
                );
                let parsed: Value = serde_json::from_slice(&body).expect("json");
                assert!(parsed["messages"].as_array().is_some_and(|m| m.len() > 10));
                assert_eq!(body, request(shape, size));
                let other = conversation(shape, size, 7);
                assert_ne!(body, other);
                assert!(other.len().abs_diff(body.len()) < size / 10);
                assert_eq!(other, conversation(shape, size, 7));
            }
        }
    }
}
