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
/// found sixteen bytes at a time ([`next_to_escape`]) and copied whole.
pub fn push_escaped(out: &mut Vec<u8>, text: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let bytes = text.as_bytes();
    let mut copied = 0;
    let mut i = next_to_escape(bytes, 0);
    while i < bytes.len() {
        let byte = bytes[i];
        let unicode;
        let escaped: &[u8] = match byte {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0x08 => b"\\b",
            0x0c => b"\\f",
            _ => {
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
        };
        out.extend_from_slice(&bytes[copied..i]);
        out.extend_from_slice(escaped);
        copied = i + 1;
        i = next_to_escape(bytes, copied);
    }
    out.extend_from_slice(&bytes[copied..]);
}

/// How many bytes [`first_to_escape`] looks at in one step.
const LANES: usize = 16;

/// The index of the first byte at or after `from` that JSON must escape (a control
/// character, `"` or `\`), or `bytes.len()` if there is none. The last few bytes
/// are padded with spaces to a whole step.
fn next_to_escape(bytes: &[u8], from: usize) -> usize {
    let mut i = from;
    while let Some(chunk) = bytes.get(i..i + LANES) {
        let chunk: &[u8; LANES] = chunk.try_into().expect("a slice of LANES bytes");
        if let Some(at) = first_to_escape(chunk) {
            return i + at;
        }
        i += LANES;
    }
    // The loop stops at the first `i` without a whole step left, so `i <= len`.
    let rest = &bytes[i..];
    if rest.is_empty() {
        return bytes.len();
    }
    let mut padded = [b' '; LANES];
    padded[..rest.len()].copy_from_slice(rest);
    first_to_escape(&padded).map_or(bytes.len(), |at| i + at)
}

/// The position of the first byte in `chunk` that JSON must escape.
#[cfg(target_arch = "x86_64")]
fn first_to_escape(chunk: &[u8; LANES]) -> Option<usize> {
    // SAFETY: SSE2 is part of every x86_64 processor.
    unsafe { first_to_escape_sse2(chunk) }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "sse2")]
fn first_to_escape_sse2(chunk: &[u8; LANES]) -> Option<usize> {
    use std::arch::x86_64::{
        _mm_cmpeq_epi8, _mm_loadu_si128, _mm_min_epu8, _mm_movemask_epi8, _mm_or_si128, _mm_set1_epi8,
    };
    // SAFETY: `chunk` is sixteen readable bytes, and an unaligned load reads exactly those.
    let v = unsafe { _mm_loadu_si128(chunk.as_ptr().cast()) };
    let quote = _mm_cmpeq_epi8(v, _mm_set1_epi8(b'"' as i8));
    let backslash = _mm_cmpeq_epi8(v, _mm_set1_epi8(b'\\' as i8));
    // A byte is a control character when the unsigned minimum of it and 0x1f is itself.
    let control = _mm_cmpeq_epi8(_mm_min_epu8(v, _mm_set1_epi8(0x1f)), v);
    let mask = _mm_movemask_epi8(_mm_or_si128(_mm_or_si128(quote, backslash), control));
    (mask != 0).then(|| mask.trailing_zeros() as usize)
}

/// The position of the first byte in `chunk` that JSON must escape.
#[cfg(not(target_arch = "x86_64"))]
fn first_to_escape(chunk: &[u8; LANES]) -> Option<usize> {
    first_to_escape_by_words(chunk)
}

/// [`first_to_escape`] without vector instructions, eight bytes at a time.
#[cfg(any(not(target_arch = "x86_64"), test))]
fn first_to_escape_by_words(chunk: &[u8; LANES]) -> Option<usize> {
    const ONES: u64 = u64::from_ne_bytes([1; 8]);
    const HIGHS: u64 = ONES << 7;
    // The high bit of each byte of `x` below `n`; a byte above a flagged one may be
    // flagged too, by the borrow, but the lowest flagged byte is always right.
    let below = |x: u64, n: u8| x.wrapping_sub(ONES * u64::from(n)) & !x & HIGHS;
    chunk.chunks_exact(8).enumerate().find_map(|(half, word)| {
        let word = u64::from_le_bytes(word.try_into().expect("eight bytes"));
        let flagged =
            below(word, 0x20) | below(word ^ (ONES * u64::from(b'"')), 1) | below(word ^ (ONES * u64::from(b'\\')), 1);
        (flagged != 0).then(|| half * 8 + flagged.trailing_zeros() as usize / 8)
    })
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
                0..80,
            )
        ) {
            let text: String = chars.into_iter().collect();
            let mut out = Vec::new();
            push_str(&mut out, &text);
            proptest::prop_assert_eq!(String::from_utf8(out).expect("utf8"), serde_json::to_string(&text).expect("json"));
        }
    }

    proptest::proptest! {
        #[test]
        fn both_ways_of_finding_a_byte_to_escape_agree(
            chunk in proptest::array::uniform16(proptest::prop_oneof![
                proptest::arbitrary::any::<u8>(),
                proptest::sample::select(vec![b'"', b'\\', 0x00, 0x1f, 0x20, 0x7f, 0x80, 0xff]),
            ])
        ) {
            let expected = chunk.iter().position(|&b| b < 0x20 || b == b'"' || b == b'\\');
            proptest::prop_assert_eq!(first_to_escape(&chunk), expected);
            proptest::prop_assert_eq!(first_to_escape_by_words(&chunk), expected);
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
