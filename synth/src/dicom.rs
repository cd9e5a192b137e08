//! DICOM files as MIMIC-CXR ships them: Digital X-Ray Image Storage - For Presentation, one
//! frame, 16 bits allocated / 12 stored, MONOCHROME1 or MONOCHROME2, coded view and patient
//! orientation, optional window and rescale. Explicit VR Little Endian by default; Implicit
//! VR Little Endian and RLE Lossless (our own PackBits encoder) on request.

use std::path::Path;

use dicom_core::value::{DataSetSequence, PixelFragmentSequence};
use dicom_core::{DataElement, Length, PrimitiveValue, VR};
use dicom_dictionary_std::{tags, uids};
use dicom_object::{FileMetaTableBuilder, InMemDicomObject};

use crate::studies::{Image, Study, Syntax};
use crate::table::{fmt_dicom_time, write_atomic};
use pipeline::{Error, Result};

/// Implementation Class UID of files the generator writes (a UUID-derived `2.25` UID).
const IMPLEMENTATION_UID: &str = "2.25.302945120386385187386203466498186839731";

/// A `2.25.<decimal>` UID from 128 bits.
pub fn uid_from(bits: u128) -> String {
    format!("2.25.{bits}")
}

fn sop_uid(dicom_id: &str) -> String {
    let hex: String = dicom_id.chars().filter(char::is_ascii_hexdigit).take(32).collect();
    uid_from(u128::from_str_radix(&hex, 16).unwrap_or(0))
}

fn code_item(value: &str, meaning: &str) -> InMemDicomObject {
    InMemDicomObject::from_element_iter([
        DataElement::new(tags::CODE_VALUE, VR::SH, PrimitiveValue::from(value)),
        DataElement::new(tags::CODING_SCHEME_DESIGNATOR, VR::SH, PrimitiveValue::from("SNM3")),
        DataElement::new(tags::CODE_MEANING, VR::LO, PrimitiveValue::from(meaning)),
    ])
}

fn seq(tag: dicom_core::Tag, items: Vec<InMemDicomObject>) -> DataElement<InMemDicomObject> {
    DataElement::new(tag, VR::SQ, DataSetSequence::new(items, Length::UNDEFINED))
}

/// Serialises one image to DICOM bytes. `stored` holds the stored pixel values (already
/// inverted for MONOCHROME1), row-major.
pub fn encode(study: &Study, image: &Image, index_in_study: usize, stored: &[u16], path: &Path) -> Result<Vec<u8>> {
    let err = |message: String| Error::Dicom { path: path.to_path_buf(), message };
    let mut obj = header(study, image, index_in_study);
    let ts = put_pixels(&mut obj, image, stored);
    let file = obj
        .with_meta(FileMetaTableBuilder::new().transfer_syntax(ts).implementation_class_uid(IMPLEMENTATION_UID))
        .map_err(|e| err(e.to_string()))?;
    let mut bytes = Vec::with_capacity(stored.len() * 2 + 4096);
    bytes.extend_from_slice(&[0u8; 128]);
    bytes.extend_from_slice(b"DICM");
    file.meta().write(&mut bytes).map_err(|e| err(e.to_string()))?;
    file.write_dataset(&mut bytes).map_err(|e| err(e.to_string()))?;
    Ok(bytes)
}

/// The image's attributes but the pixels: identifiers, dates, view, orientation, the pixel
/// format, the procedure and view code sequences.
fn header(study: &Study, image: &Image, index_in_study: usize) -> InMemDicomObject {
    let date = study.time.format("%Y%m%d").to_string();
    let time = fmt_dicom_time(study.time);
    let sop = sop_uid(&image.dicom_id);
    let study_uid = uid_from((u128::from(study.study_id) << 64) | u128::from(study.subject_id));
    let series_uid = uid_from((u128::from(study.study_id) << 64) | (1 << 40) | index_in_study as u128);
    let photometric = if image.monochrome1 { "MONOCHROME1" } else { "MONOCHROME2" };

    let mut obj = InMemDicomObject::from_element_iter([
        DataElement::new(
            tags::IMAGE_TYPE,
            VR::CS,
            PrimitiveValue::Strs(["ORIGINAL".to_string(), "PRIMARY".to_string()].into()),
        ),
        DataElement::new(
            tags::SOP_CLASS_UID,
            VR::UI,
            PrimitiveValue::from(uids::DIGITAL_X_RAY_IMAGE_STORAGE_FOR_PRESENTATION),
        ),
        DataElement::new(tags::SOP_INSTANCE_UID, VR::UI, PrimitiveValue::from(sop.as_str())),
        DataElement::new(tags::STUDY_DATE, VR::DA, PrimitiveValue::from(date.as_str())),
        DataElement::new(tags::STUDY_TIME, VR::TM, PrimitiveValue::from(time.as_str())),
        DataElement::new(tags::ACCESSION_NUMBER, VR::SH, PrimitiveValue::Empty),
        DataElement::new(tags::MODALITY, VR::CS, PrimitiveValue::from("DX")),
        DataElement::new(tags::PRESENTATION_INTENT_TYPE, VR::CS, PrimitiveValue::from("FOR PRESENTATION")),
        DataElement::new(tags::REFERRING_PHYSICIAN_NAME, VR::PN, PrimitiveValue::Empty),
        DataElement::new(tags::STUDY_DESCRIPTION, VR::LO, PrimitiveValue::from(study.procedure)),
        DataElement::new(tags::PATIENT_NAME, VR::PN, PrimitiveValue::Empty),
        DataElement::new(tags::PATIENT_ID, VR::LO, PrimitiveValue::from(study.subject_id.to_string())),
        DataElement::new(tags::PATIENT_BIRTH_DATE, VR::DA, PrimitiveValue::Empty),
        DataElement::new(tags::BODY_PART_EXAMINED, VR::CS, PrimitiveValue::from("CHEST")),
        DataElement::new(tags::VIEW_POSITION, VR::CS, PrimitiveValue::from(image.view)),
        DataElement::new(tags::STUDY_INSTANCE_UID, VR::UI, PrimitiveValue::from(study_uid.as_str())),
        DataElement::new(tags::SERIES_INSTANCE_UID, VR::UI, PrimitiveValue::from(series_uid.as_str())),
        DataElement::new(tags::STUDY_ID, VR::SH, PrimitiveValue::from(study.study_id.to_string())),
        DataElement::new(tags::SERIES_NUMBER, VR::IS, PrimitiveValue::from((index_in_study + 1).to_string())),
        DataElement::new(tags::INSTANCE_NUMBER, VR::IS, PrimitiveValue::from("1")),
        DataElement::new(tags::SAMPLES_PER_PIXEL, VR::US, PrimitiveValue::from(1_u16)),
        DataElement::new(tags::PHOTOMETRIC_INTERPRETATION, VR::CS, PrimitiveValue::from(photometric)),
        DataElement::new(tags::ROWS, VR::US, PrimitiveValue::from(image.rows)),
        DataElement::new(tags::COLUMNS, VR::US, PrimitiveValue::from(image.cols)),
        DataElement::new(tags::BITS_ALLOCATED, VR::US, PrimitiveValue::from(16_u16)),
        DataElement::new(tags::BITS_STORED, VR::US, PrimitiveValue::from(12_u16)),
        DataElement::new(tags::HIGH_BIT, VR::US, PrimitiveValue::from(11_u16)),
        DataElement::new(tags::PIXEL_REPRESENTATION, VR::US, PrimitiveValue::from(0_u16)),
        DataElement::new(tags::LOSSY_IMAGE_COMPRESSION, VR::CS, PrimitiveValue::from("00")),
        DataElement::new(tags::PERFORMED_PROCEDURE_STEP_DESCRIPTION, VR::LO, PrimitiveValue::from(study.procedure)),
    ]);
    obj.put(seq(
        tags::PROCEDURE_CODE_SEQUENCE,
        vec![InMemDicomObject::from_element_iter([
            DataElement::new(tags::CODE_VALUE, VR::SH, PrimitiveValue::from("CXR")),
            DataElement::new(tags::CODING_SCHEME_DESIGNATOR, VR::SH, PrimitiveValue::from("L")),
            DataElement::new(tags::CODE_MEANING, VR::LO, PrimitiveValue::from(study.procedure)),
        ])],
    ));
    let (code, meaning) = image.view_code;
    obj.put(seq(tags::VIEW_CODE_SEQUENCE, if code.is_empty() { vec![] } else { vec![code_item(code, meaning)] }));
    match image.orientation {
        "Erect" => obj.put(seq(tags::PATIENT_ORIENTATION_CODE_SEQUENCE, vec![code_item("F-10440", "Erect")])),
        "Recumbent" => obj.put(seq(tags::PATIENT_ORIENTATION_CODE_SEQUENCE, vec![code_item("F-10450", "Recumbent")])),
        _ => None,
    };
    obj
}

/// The window, rescale and pixel data elements of `stored` in the image's transfer syntax;
/// returns that syntax's UID.
fn put_pixels(obj: &mut InMemDicomObject, image: &Image, stored: &[u16]) -> &'static str {
    if image.window {
        let (lo, hi) = stored.iter().fold((u16::MAX, 0u16), |(lo, hi), &v| (lo.min(v), hi.max(v)));
        let width = f64::from(hi.saturating_sub(lo)).max(1.0);
        let center = f64::from(lo) + width / 2.0;
        obj.put(DataElement::new(tags::WINDOW_CENTER, VR::DS, PrimitiveValue::from(format!("{center}"))));
        obj.put(DataElement::new(tags::WINDOW_WIDTH, VR::DS, PrimitiveValue::from(format!("{width}"))));
    }
    if image.rescale {
        obj.put(DataElement::new(tags::RESCALE_INTERCEPT, VR::DS, PrimitiveValue::from("0")));
        obj.put(DataElement::new(tags::RESCALE_SLOPE, VR::DS, PrimitiveValue::from("1")));
        obj.put(DataElement::new(tags::RESCALE_TYPE, VR::LO, PrimitiveValue::from("US")));
    }
    let le: Vec<u8> = stored.iter().flat_map(|v| v.to_le_bytes()).collect();
    match image.syntax {
        Syntax::ExplicitLittle => {
            obj.put(DataElement::new(tags::PIXEL_DATA, VR::OW, PrimitiveValue::from(le)));
            uids::EXPLICIT_VR_LITTLE_ENDIAN
        }
        Syntax::ImplicitLittle => {
            obj.put(DataElement::new(tags::PIXEL_DATA, VR::OW, PrimitiveValue::from(le)));
            uids::IMPLICIT_VR_LITTLE_ENDIAN
        }
        Syntax::Rle => {
            let frame = rle_encode_u16(stored, usize::from(image.rows), usize::from(image.cols));
            obj.put(DataElement::new(
                tags::PIXEL_DATA,
                VR::OB,
                PixelFragmentSequence::new(Vec::<u32>::new(), vec![frame]),
            ));
            uids::RLE_LOSSLESS
        }
    }
}

/// Encodes and writes atomically.
pub fn write(study: &Study, image: &Image, index_in_study: usize, stored: &[u16], path: &Path) -> Result<()> {
    let bytes = encode(study, image, index_in_study, stored, path)?;
    write_atomic(path, &bytes)
}

/// DICOM RLE Lossless (PS3.5 Annex G) of one 16-bit frame: two byte-plane segments (high
/// bytes first), each row PackBits-encoded separately, segments padded to even length.
pub fn rle_encode_u16(pixels: &[u16], rows: usize, cols: usize) -> Vec<u8> {
    let mut segments: [Vec<u8>; 2] = [Vec::new(), Vec::new()];
    let mut plane = vec![0u8; cols];
    for (s, seg) in segments.iter_mut().enumerate() {
        for r in 0..rows {
            for (c, b) in plane.iter_mut().enumerate() {
                let v = pixels[r * cols + c];
                *b = if s == 0 { (v >> 8) as u8 } else { v as u8 };
            }
            packbits(&plane, seg);
        }
        if seg.len() % 2 == 1 {
            seg.push(0);
        }
    }
    let mut out = Vec::with_capacity(64 + segments[0].len() + segments[1].len());
    out.extend_from_slice(&2u32.to_le_bytes());
    let mut offset = 64u32;
    for seg in &segments {
        out.extend_from_slice(&offset.to_le_bytes());
        offset += seg.len() as u32;
    }
    out.resize(64, 0);
    for seg in &segments {
        out.extend_from_slice(seg);
    }
    out
}

/// PackBits: `n` in 0..=127 = copy the next n+1 bytes; `n` in -127..=-1 = repeat the next
/// byte 1-n times.
fn packbits(src: &[u8], out: &mut Vec<u8>) {
    let mut i = 0;
    while i < src.len() {
        let mut run = 1;
        while i + run < src.len() && run < 128 && src[i + run] == src[i] {
            run += 1;
        }
        if run >= 2 {
            out.push((257 - run) as u8);
            out.push(src[i]);
            i += run;
            continue;
        }
        let start = i;
        while i < src.len() && i - start < 128 && !(i + 1 < src.len() && src[i] == src[i + 1]) {
            i += 1;
        }
        out.push((i - start - 1) as u8);
        out.extend_from_slice(&src[start..i]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unpackbits(mut src: &[u8], n: usize) -> Vec<u8> {
        let mut out = Vec::new();
        while out.len() < n {
            let h = src[0] as i8;
            if h >= 0 {
                let k = h as usize + 1;
                out.extend_from_slice(&src[1..1 + k]);
                src = &src[1 + k..];
            } else if h != -128 {
                out.extend(std::iter::repeat_n(src[1], (1 - i32::from(h)) as usize));
                src = &src[2..];
            } else {
                src = &src[1..];
            }
        }
        out
    }

    #[test]
    fn packbits_round_trips() {
        let cases: Vec<Vec<u8>> = vec![
            vec![1],
            vec![1, 1],
            vec![1, 2, 3, 3, 3, 3, 4, 5, 5],
            (0..300).map(|i| (i / 7) as u8).collect(),
            (0..300).map(|i| (i * 37 % 251) as u8).collect(),
            vec![9; 1000],
        ];
        for c in cases {
            let mut enc = Vec::new();
            packbits(&c, &mut enc);
            assert_eq!(unpackbits(&enc, c.len()), c);
        }
    }
}
