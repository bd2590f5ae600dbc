//! kcat-like output templates for `consume --format`: `%t` topic, `%p` partition, `%o`
//! offset, `%T` timestamp (ms), `%k` key, `%s` value, `%K` key length, `%S` value length,
//! `%h` headers (`name=value` joined by `,`), `%%` a percent sign; escapes `\n \t \r \\ \0`.
//! Nothing is added at the end: write `%s\n` for one value per line.

use crate::log::format::Record;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Lit(Vec<u8>),
    Topic,
    Partition,
    Offset,
    Ts,
    Key,
    Value,
    KeyLen,
    ValueLen,
    Headers,
}

#[derive(Debug, Clone)]
pub struct Template {
    pieces: Vec<Piece>,
}

impl Template {
    pub fn parse(s: &str) -> Result<Template, String> {
        let mut pieces = Vec::new();
        let mut lit = Vec::new();
        let mut it = s.chars();
        while let Some(c) = it.next() {
            match c {
                '%' => {
                    let p = match it.next() {
                        Some('t') => Piece::Topic,
                        Some('p') => Piece::Partition,
                        Some('o') => Piece::Offset,
                        Some('T') => Piece::Ts,
                        Some('k') => Piece::Key,
                        Some('s') => Piece::Value,
                        Some('K') => Piece::KeyLen,
                        Some('S') => Piece::ValueLen,
                        Some('h') => Piece::Headers,
                        Some('%') => {
                            lit.push(b'%');
                            continue;
                        }
                        Some(o) => {
                            return Err(format!("unknown format directive %{o} (see --help)"))
                        }
                        None => return Err("format ends with a lone %".into()),
                    };
                    if !lit.is_empty() {
                        pieces.push(Piece::Lit(std::mem::take(&mut lit)));
                    }
                    pieces.push(p);
                }
                '\\' => match it.next() {
                    Some('n') => lit.push(b'\n'),
                    Some('t') => lit.push(b'\t'),
                    Some('r') => lit.push(b'\r'),
                    Some('0') => lit.push(0),
                    Some('\\') => lit.push(b'\\'),
                    Some(o) => return Err(format!("unknown escape \\{o} (\\n \\t \\r \\0 \\\\)")),
                    None => return Err("format ends with a lone \\".into()),
                },
                c => {
                    let mut b = [0u8; 4];
                    lit.extend_from_slice(c.encode_utf8(&mut b).as_bytes());
                }
            }
        }
        if !lit.is_empty() {
            pieces.push(Piece::Lit(lit));
        }
        Ok(Template { pieces })
    }

    pub fn render(&self, out: &mut Vec<u8>, topic: &str, partition: u32, rec: &Record<'_>) {
        let mut ib = itoa::Buffer::new();
        for p in &self.pieces {
            match p {
                Piece::Lit(l) => out.extend_from_slice(l),
                Piece::Topic => out.extend_from_slice(topic.as_bytes()),
                Piece::Partition => out.extend_from_slice(ib.format(partition).as_bytes()),
                Piece::Offset => out.extend_from_slice(ib.format(rec.offset).as_bytes()),
                Piece::Ts => out.extend_from_slice(ib.format(rec.timestamp).as_bytes()),
                Piece::Key => out.extend_from_slice(rec.key.unwrap_or_default()),
                Piece::Value => out.extend_from_slice(rec.value),
                Piece::KeyLen => out.extend_from_slice(
                    ib.format(rec.key.map_or(-1, |k| k.len() as i64)).as_bytes(),
                ),
                Piece::ValueLen => out.extend_from_slice(ib.format(rec.value.len()).as_bytes()),
                Piece::Headers => {
                    for (i, (n, v)) in rec.headers().enumerate() {
                        if i > 0 {
                            out.push(b',');
                        }
                        out.extend_from_slice(n);
                        out.push(b'=');
                        out.extend_from_slice(v);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_rejects() {
        assert!(Template::parse("%t %p %o %T %k %s %K %S %h %%\\n\\t").is_ok());
        assert!(Template::parse("%x").is_err());
        assert!(Template::parse("50%").is_err());
        assert!(Template::parse("\\q").is_err());
    }
}
