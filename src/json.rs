//! Writing JSON strings by hand where serde_json's byte-at-a-time escaping
//! shows up in a profile: log records and error bodies. The output is the same
//! as serde_json's, byte for byte.

/// Appends what is written to it to a JSON string, escaped.
pub struct Escaping<'a>(pub &'a mut Vec<u8>);

impl std::fmt::Write for Escaping<'_> {
    fn write_str(&mut self, text: &str) -> std::fmt::Result {
        push_escaped(self.0, text);
        Ok(())
    }
}

/// Appends `text` as a JSON string.
pub fn push_str(out: &mut Vec<u8>, text: &str) {
    out.push(b'"');
    push_escaped(out, text);
    out.push(b'"');
}

/// Appends `text` escaped as the inside of a JSON string, the way serde_json
/// escapes it. Runs that need no escaping (nearly every string in a record) are
/// checked eight bytes at a time, the last few padded to eight, and copied whole.
pub fn push_escaped(out: &mut Vec<u8>, text: &str) {
    let bytes = text.as_bytes();
    let mut copied = 0;
    let mut i = 0;
    while i < bytes.len() {
        let word = match bytes.get(i..i + 8) {
            Some(word) => u64::from_le_bytes(word.try_into().expect("a slice of eight bytes")),
            None => {
                let mut padded = [b' '; 8];
                for (slot, byte) in padded.iter_mut().zip(&bytes[i..]) {
                    *slot = *byte;
                }
                u64::from_le_bytes(padded)
            }
        };
        if !needs_escape(word) {
            // Past the end for the padded last word, which ends the loop.
            i += 8;
            continue;
        }
        let byte = bytes[i];
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let unicode;
        let escaped: &[u8] = match byte {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0x08 => b"\\b",
            0x0c => b"\\f",
            0x00..=0x1f => {
                unicode = [
                    b'\\',
                    b'u',
                    b'0',
                    b'0',
                    HEX[usize::from(byte >> 4)],
                    HEX[usize::from(byte & 0xf)],
                ];
                &unicode
            }
            _ => {
                i += 1;
                continue;
            }
        };
        out.extend_from_slice(&bytes[copied..i]);
        out.extend_from_slice(escaped);
        i += 1;
        copied = i;
    }
    out.extend_from_slice(&bytes[copied..]);
}

/// Whether any of the eight bytes of `word` is a control character, `"` or `\`
/// (exact for the word as a whole, which is all the caller asks).
fn needs_escape(word: u64) -> bool {
    const ONES: u64 = u64::from_ne_bytes([1; 8]);
    const HIGHS: u64 = ONES << 7;
    let below = |x: u64, n: u8| x.wrapping_sub(ONES * u64::from(n)) & !x & HIGHS;
    let control = below(word, 0x20);
    let quote = below(word ^ (ONES * u64::from(b'"')), 1);
    let backslash = below(word ^ (ONES * u64::from(b'\\')), 1);
    control | quote | backslash != 0
}

/// Appends `texts` as a JSON array of strings.
pub fn push_str_array<T: AsRef<str>>(out: &mut Vec<u8>, texts: &[T]) {
    out.push(b'[');
    for (n, text) in texts.iter().enumerate() {
        if n > 0 {
            out.push(b',');
        }
        push_str(out, text.as_ref());
    }
    out.push(b']');
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        #[test]
        fn strings_are_escaped_as_serde_json_escapes_them(
            chars in proptest::collection::vec(
                proptest::prop_oneof![
                    proptest::arbitrary::any::<char>(),
                    proptest::sample::select(vec!['"', '\\', '\n', '\r', '\t', '\u{0}', '\u{8}', '\u{c}', '\u{1f}', '\u{7f}', 'a', 'é', '€']),
                ],
                0..40,
            )
        ) {
            let text: String = chars.into_iter().collect();
            let mut out = Vec::new();
            push_str(&mut out, &text);
            proptest::prop_assert_eq!(String::from_utf8(out).expect("utf8"), serde_json::to_string(&text).expect("json"));
        }
    }

    #[test]
    fn string_arrays_are_written_as_serde_json_writes_them() {
        for texts in [vec![], vec!["SKU-1"], vec!["a\"b", "c\nd", ""]] {
            let mut out = Vec::new();
            push_str_array(&mut out, &texts);
            assert_eq!(
                String::from_utf8(out).expect("utf8"),
                serde_json::to_string(&texts).expect("json")
            );
        }
    }
}
