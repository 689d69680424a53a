//! Metering for the media endpoints: speech is charged per character of its input
//! (the model's `input` price is per 1M characters), transcriptions and translations
//! per second of audio (`per_second`) or by the tokens the upstream reports.

use billing::Usage;
use bytes::Bytes;
use serde_json::Value;

use crate::RelayError;
use crate::multipart;

/// Audio bytes a second at 4 kbit/s, below any speech codec a transcriber takes (Opus
/// and AMR start above it): an upload plays at most its size over this. The hold of a
/// transcription (and, when an upstream states no duration, its charge) assumes it
/// unless the file's own header gives the duration (WAV).
const MIN_BYTES_PER_SECOND: usize = 500;

/// A speech request's usage: the characters of its `input`, as prompt units.
pub fn speech_usage(raw: &[u8]) -> Usage {
    let chars = serde_json::from_slice::<Value>(raw)
        .ok()
        .and_then(|v| {
            v.get("input")
                .and_then(Value::as_str)
                .map(|s| s.chars().count())
        })
        .unwrap_or(0);
    Usage {
        prompt_tokens: i64::try_from(chars).unwrap_or(i64::MAX),
        ..Usage::default()
    }
}

/// The longest an upload of `request_len` bytes can play (rounded up, at least one).
pub fn estimated_seconds(request_len: usize) -> i64 {
    i64::try_from(request_len.div_ceil(MIN_BYTES_PER_SECOND).max(1)).unwrap_or(i64::MAX)
}

/// The longest a form's audio can play: the WAV header's own duration when the file is
/// a WAV, else [`estimated_seconds`] of the files' size.
pub fn longest_seconds(body: &[u8]) -> i64 {
    let Some((fields, _)) = form_fields(body) else {
        return estimated_seconds(body.len());
    };
    let files: Vec<&[u8]> = fields
        .iter()
        .filter(|f| f.filename.is_some())
        .filter_map(|f| body.get(f.start..f.end))
        .collect();
    let mut total = 0_i64;
    for file in files {
        total = total
            .saturating_add(wav_seconds(file).unwrap_or_else(|| estimated_seconds(file.len())));
    }
    total.max(1)
}

/// A form's fields, found by its own first boundary line (`--boundary\r\n`).
fn form_fields(body: &[u8]) -> Option<(Vec<multipart::Field>, String)> {
    let line_end = memchr::memmem::find(body, b"\r\n")?;
    let boundary = std::str::from_utf8(body.get(2..line_end)?).ok()?;
    if !body.starts_with(b"--") || boundary.is_empty() {
        return None;
    }
    let fields = multipart::fields(body, boundary).ok()?;
    Some((fields, boundary.to_owned()))
}

/// Seconds of a PCM WAV file from its header (`fmt ` byte rate, `data` size), rounded
/// up; `None` when the file is not a WAV or the header is unusable.
pub fn wav_seconds(file: &[u8]) -> Option<i64> {
    if file.get(0..4)? != b"RIFF" || file.get(8..12)? != b"WAVE" {
        return None;
    }
    let u32_at = |at: usize| -> Option<u32> {
        Some(u32::from_le_bytes(file.get(at..at + 4)?.try_into().ok()?))
    };
    let u16_at = |at: usize| -> Option<u32> {
        Some(u32::from(u16::from_le_bytes(
            file.get(at..at + 2)?.try_into().ok()?,
        )))
    };
    let (mut at, mut byte_rate, mut data) = (12_usize, None, None);
    while at + 8 <= file.len() && (byte_rate.is_none() || data.is_none()) {
        let id = file.get(at..at + 4)?;
        let size = usize::try_from(u32_at(at + 4)?).ok()?;
        match id {
            // Only a consistent header is believed: a decoder plays at sample rate ×
            // block align, whatever the byte-rate field claims.
            b"fmt " => {
                let (channels, rate) = (u16_at(at + 10)?, u32_at(at + 12)?);
                let (stated, align) = (u32_at(at + 16)?, u16_at(at + 20)?);
                let bits = u16_at(at + 22)?;
                let consistent = (1..=8).contains(&channels)
                    && (1_000..=384_000).contains(&rate)
                    && bits > 0
                    && align == channels * bits.div_ceil(8)
                    && u64::from(stated) == u64::from(rate) * u64::from(align);
                if !consistent {
                    return None;
                }
                byte_rate = Some(stated);
            }
            b"data" => data = Some(size.min(file.len().saturating_sub(at + 8))),
            _ => {}
        }
        at = at.checked_add(8 + size + (size & 1))?;
    }
    let (rate, data) = (
        u64::from(byte_rate.filter(|r| *r > 0)?),
        u64::try_from(data?).ok()?,
    );
    i64::try_from(data.div_ceil(rate).max(1)).ok()
}

/// What a transcription client asked its answer to be (`response_format`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TranscriptFormat {
    Json,
    Text,
    Srt,
    Vtt,
    /// `verbose_json`, or a format the relay passes through untouched.
    AsIs,
}

/// How a transcription goes upstream so that its answer states what to charge:
/// whisper-style models are asked for `verbose_json` (it carries the duration) and the
/// client's format is made from it; OpenAI's GPT-4o transcribers, which report token
/// usage in `json` but nothing in `text`, are asked for `json`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TranscriptPlan {
    pub client: TranscriptFormat,
    /// The `response_format` to ask the upstream for instead of the client's.
    pub upstream: Option<&'static str>,
}

/// The plan for a transcription or translation form sent to `upstream_model`.
pub fn transcript_plan(upstream_model: &str, body: &[u8]) -> TranscriptPlan {
    let asked = form_fields(body)
        .and_then(|(fields, _)| {
            multipart::text_field(body, &fields, "response_format").map(|f| f.trim().to_owned())
        })
        .unwrap_or_else(|| "json".to_owned());
    let client = match asked.as_str() {
        "json" => TranscriptFormat::Json,
        "text" => TranscriptFormat::Text,
        "srt" => TranscriptFormat::Srt,
        "vtt" => TranscriptFormat::Vtt,
        _ => TranscriptFormat::AsIs,
    };
    let m = upstream_model.to_ascii_lowercase();
    let token_metered = m.contains("gpt-4o") || m.contains("transcribe");
    let upstream = match client {
        TranscriptFormat::AsIs => None,
        TranscriptFormat::Text if token_metered => Some("json"),
        _ if token_metered => None,
        _ => Some("verbose_json"),
    };
    TranscriptPlan { client, upstream }
}

/// A form with `response_format` set to `value` (replaced, or added before the end).
pub fn form_with_format(raw: &Bytes, value: &str) -> Result<Bytes, RelayError> {
    let (fields, boundary) = form_fields(raw)
        .ok_or_else(|| RelayError::InvalidRequest("expected multipart/form-data".into()))?;
    if fields.iter().any(|f| f.name == "response_format") {
        return Ok(multipart::replace_text(
            raw,
            &fields,
            "response_format",
            value,
        ));
    }
    let closing = format!("--{boundary}--");
    let at = memchr::memmem::rfind(raw, closing.as_bytes())
        .ok_or_else(|| RelayError::InvalidRequest("the form has no closing boundary".into()))?;
    let mut out = bytes::BytesMut::with_capacity(raw.len() + 128);
    out.extend_from_slice(&raw[..at]);
    out.extend_from_slice(
        format!("--{boundary}\r\nContent-Disposition: form-data; name=\"response_format\"\r\n\r\n{value}\r\n")
            .as_bytes(),
    );
    out.extend_from_slice(&raw[at..]);
    Ok(out.freeze())
}

/// The client's format made from the upstream's `verbose_json` or `json` answer, with
/// its content type; `None` when the answer cannot be read (it then goes as it came).
pub fn render_transcript(client: TranscriptFormat, answer: &[u8]) -> Option<(Bytes, &'static str)> {
    let v: Value = serde_json::from_slice(answer).ok()?;
    let text = v.get("text").and_then(Value::as_str)?.to_owned();
    let segments: Vec<(f64, f64, String)> = v
        .get("segments")
        .and_then(Value::as_array)
        .map(|segs| {
            segs.iter()
                .filter_map(|s| {
                    Some((
                        s.get("start")?.as_f64()?,
                        s.get("end")?.as_f64()?,
                        s.get("text")?.as_str()?.trim().to_owned(),
                    ))
                })
                .collect()
        })
        .unwrap_or_default();
    let cues = |sep: char| {
        let mut out = String::new();
        let list = if segments.is_empty() {
            let end = v.get("duration").and_then(Value::as_f64).unwrap_or(0.0);
            vec![(0.0, end, text.trim().to_owned())]
        } else {
            segments.clone()
        };
        for (i, (start, end, line)) in list.iter().enumerate() {
            if sep == ',' {
                out.push_str(&format!("{}\n", i + 1));
            }
            out.push_str(&format!(
                "{} --> {}\n{line}\n\n",
                stamp(*start, sep),
                stamp(*end, sep)
            ));
        }
        out
    };
    Some(match client {
        TranscriptFormat::Text => (
            Bytes::from(format!("{text}\n")),
            "text/plain; charset=utf-8",
        ),
        TranscriptFormat::Srt => (Bytes::from(cues(',')), "text/plain; charset=utf-8"),
        TranscriptFormat::Vtt => (
            Bytes::from(format!("WEBVTT\n\n{}", cues('.'))),
            "text/vtt; charset=utf-8",
        ),
        TranscriptFormat::Json => {
            let mut out = serde_json::json!({"text": text});
            if let Some(u) = v.get("usage") {
                out["usage"] = u.clone();
            } else if let Some(d) = v.get("duration").and_then(Value::as_f64) {
                out["usage"] = serde_json::json!({"type": "duration", "seconds": d.ceil() as i64});
            }
            (Bytes::from(out.to_string()), "application/json")
        }
        TranscriptFormat::AsIs => return None,
    })
}

/// `hh:mm:ss,mmm` (SRT) or `hh:mm:ss.mmm` (VTT).
fn stamp(seconds: f64, sep: char) -> String {
    let ms = (seconds.max(0.0) * 1000.0).round() as u64;
    format!(
        "{:02}:{:02}:{:02}{sep}{:03}",
        ms / 3_600_000,
        ms / 60_000 % 60,
        ms / 1000 % 60,
        ms % 1000
    )
}

/// A transcription's usage and text. OpenAI reports `usage` as
/// `{"type":"duration","seconds":…}` (whisper) or `{"type":"tokens",…}` (the GPT-4o
/// transcribers); `verbose_json` carries `duration`; plain formats carry nothing, and
/// then the charge is `longest`, the most the upload can play (as held).
pub fn transcription_usage(body: &[u8], longest: i64) -> (Usage, String) {
    let mut usage = Usage::default();
    let Ok(v) = serde_json::from_slice::<Value>(body) else {
        usage.seconds = longest;
        return (usage, String::from_utf8_lossy(body).into_owned());
    };
    let text = v
        .get("text")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let int = |x: Option<&Value>| x.and_then(Value::as_i64).unwrap_or(0);
    let seconds = |x: Option<&Value>| {
        x.and_then(Value::as_f64)
            .filter(|s| s.is_finite() && *s >= 0.0)
            .map(|s| s.ceil() as i64)
    };
    let u = v.get("usage");
    match u.and_then(|u| u.get("type")).and_then(Value::as_str) {
        Some("tokens") => {
            usage.prompt_tokens = int(u.and_then(|u| u.get("input_tokens")));
            usage.completion_tokens = int(u.and_then(|u| u.get("output_tokens")));
        }
        Some("duration") => {
            usage.seconds = seconds(u.and_then(|u| u.get("seconds"))).unwrap_or(0);
        }
        _ => {
            usage.seconds = seconds(v.get("duration")).unwrap_or(longest);
        }
    }
    (usage, text)
}

/// A form upload for the upstream: as received, with `model` swapped when the channel
/// maps it to another name.
pub fn form_with_model(
    raw: &Bytes,
    content_type: &str,
    model: &str,
    upstream_model: &str,
) -> Result<Bytes, RelayError> {
    if model == upstream_model {
        return Ok(raw.clone());
    }
    let boundary = multipart::boundary(content_type)?;
    let fields = multipart::fields(raw, &boundary)?;
    Ok(multipart::replace_text(
        raw,
        &fields,
        "model",
        upstream_model,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transcriptions_are_metered_by_reported_duration_tokens_or_size() {
        let (u, text) = transcription_usage(
            br#"{"text":"hi","usage":{"type":"duration","seconds":7.2}}"#,
            1,
        );
        assert_eq!((u.seconds, text.as_str()), (8, "hi"));
        let (u, _) = transcription_usage(
            br#"{"text":"hi","usage":{"type":"tokens","input_tokens":50,"output_tokens":9}}"#,
            1,
        );
        assert_eq!(
            (u.prompt_tokens, u.completion_tokens, u.seconds),
            (50, 9, 0)
        );
        let (u, _) = transcription_usage(br#"{"text":"hi","duration":3.0}"#, 1);
        assert_eq!(u.seconds, 3);
        // No duration anywhere: the longest the upload can play.
        let (u, text) = transcription_usage(b"plain words", estimated_seconds(48_001));
        assert_eq!((u.seconds, text.as_str()), (97, "plain words"));
    }

    fn form(fields: &[(&str, Option<&str>, &[u8])]) -> Bytes {
        let mut out = Vec::new();
        for (name, file, content) in fields {
            out.extend_from_slice(b"--B\r\nContent-Disposition: form-data; name=\"");
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(b"\"");
            if let Some(f) = file {
                out.extend_from_slice(format!("; filename=\"{f}\"").as_bytes());
            }
            out.extend_from_slice(b"\r\n\r\n");
            out.extend_from_slice(content);
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"--B--\r\n");
        Bytes::from(out)
    }

    /// A mono 8 kHz 16-bit WAV of `seconds` of silence.
    fn wav(seconds: u32) -> Vec<u8> {
        let data = 16_000 * seconds;
        let mut out = b"RIFF".to_vec();
        out.extend_from_slice(&(36 + data).to_le_bytes());
        out.extend_from_slice(b"WAVEfmt ");
        out.extend_from_slice(&16_u32.to_le_bytes());
        out.extend_from_slice(&[1, 0, 1, 0]);
        out.extend_from_slice(&8_000_u32.to_le_bytes());
        out.extend_from_slice(&16_000_u32.to_le_bytes());
        out.extend_from_slice(&[2, 0, 16, 0]);
        out.extend_from_slice(b"data");
        out.extend_from_slice(&data.to_le_bytes());
        out.resize(44 + data as usize, 0);
        out
    }

    #[test]
    fn the_hold_of_a_transcription_bounds_any_bitrate_and_reads_a_wavs_own_duration() {
        let wav_form = form(&[
            ("model", None, b"whisper-1"),
            ("file", Some("a.wav"), &wav(3)),
        ]);
        assert_eq!(longest_seconds(&wav_form), 3);
        // A header whose byte rate does not match its format is not believed.
        let mut lying = wav(3);
        lying[28..32].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(wav_seconds(&lying), None);
        // 40 kB of mp3 could be 80 s of 4 kbit/s speech.
        let mp3_form = form(&[
            ("model", None, b"whisper-1"),
            ("file", Some("a.mp3"), &[0xFF; 40_000]),
        ]);
        assert_eq!(longest_seconds(&mp3_form), 80);
    }

    #[test]
    fn whisper_is_asked_for_verbose_json_and_the_clients_format_is_made_from_it() {
        let srt = form(&[
            ("model", None, b"whisper-1"),
            ("response_format", None, b"srt"),
            ("file", Some("a.mp3"), b"ID3"),
        ]);
        let plan = transcript_plan("whisper-1", &srt);
        assert_eq!(
            plan,
            TranscriptPlan {
                client: TranscriptFormat::Srt,
                upstream: Some("verbose_json")
            }
        );
        let sent = form_with_format(&srt, "verbose_json").unwrap();
        let (f, _) = form_fields(&sent).unwrap();
        assert_eq!(
            multipart::text_field(&sent, &f, "response_format"),
            Some("verbose_json")
        );
        // No format named: json, and the field is added.
        let plain = form(&[
            ("model", None, b"whisper-1"),
            ("file", Some("a.mp3"), b"ID3"),
        ]);
        assert_eq!(
            transcript_plan("whisper-1", &plain).client,
            TranscriptFormat::Json
        );
        let sent = form_with_format(&plain, "verbose_json").unwrap();
        let (f, _) = form_fields(&sent).unwrap();
        assert_eq!(
            multipart::text_field(&sent, &f, "response_format"),
            Some("verbose_json")
        );
        assert_eq!(f.iter().filter(|x| x.filename.is_some()).count(), 1);
        // GPT-4o transcribers report tokens in json.
        let text = form(&[
            ("model", None, b"gpt-4o-transcribe"),
            ("response_format", None, b"text"),
            ("file", Some("a.mp3"), b"ID3"),
        ]);
        assert_eq!(
            transcript_plan("gpt-4o-transcribe", &text).upstream,
            Some("json")
        );

        let verbose = br#"{"task":"transcribe","language":"english","duration":3.5,"text":"Hello there. General Kenobi.","segments":[{"id":0,"start":0.0,"end":1.5,"text":" Hello there."},{"id":1,"start":1.5,"end":3.5,"text":" General Kenobi."}]}"#;
        let (srt, _) = render_transcript(TranscriptFormat::Srt, verbose).unwrap();
        assert_eq!(&srt[..], b"1\n00:00:00,000 --> 00:00:01,500\nHello there.\n\n2\n00:00:01,500 --> 00:00:03,500\nGeneral Kenobi.\n\n");
        let (vtt, ct) = render_transcript(TranscriptFormat::Vtt, verbose).unwrap();
        assert!(vtt.starts_with(b"WEBVTT\n\n00:00:00.000 --> 00:00:01.500\nHello there."));
        assert!(ct.starts_with("text/vtt"));
        let (text, _) = render_transcript(TranscriptFormat::Text, verbose).unwrap();
        assert_eq!(&text[..], b"Hello there. General Kenobi.\n");
        let (json, _) = render_transcript(TranscriptFormat::Json, verbose).unwrap();
        let json: Value = serde_json::from_slice(&json).unwrap();
        assert_eq!(json["usage"]["seconds"], 4);
    }

    #[test]
    fn speech_is_counted_in_characters_not_bytes() {
        let u =
            speech_usage(r#"{"model":"tts-1","input":"héllo 世界","voice":"alloy"}"#.as_bytes());
        assert_eq!(u.prompt_tokens, 8);
    }
}
