//! Generated DICOM files read back with dicom-object: the tags MIMIC-CXR carries, matching
//! the metadata table, and pixel data intact in every transfer syntax.

use std::collections::{HashMap, HashSet};

use dicom_dictionary_std::{tags, uids};
use dicom_object::{DefaultDicomObject, open_file};

use crate::fixture::{CXR_DCM, CXR_JPG, Csv, config, generate, small};

fn text(obj: &DefaultDicomObject, tag: dicom_core::Tag) -> String {
    obj.element(tag).unwrap().to_str().unwrap().trim_end_matches(['\0', ' ']).to_string()
}

fn code_meaning(obj: &DefaultDicomObject, tag: dicom_core::Tag) -> Option<String> {
    let items = obj.element_opt(tag).unwrap()?.items()?.to_vec();
    let item = items.first()?;
    Some(item.element(tags::CODE_MEANING).unwrap().to_str().unwrap().trim().to_string())
}

fn path_of(r: &[String], ext: &str) -> String {
    format!("files/p{}/p{}/s{}/{}.{ext}", &r[1][..2], r[1], r[2], r[0])
}

/// Stored pixel values, whatever the transfer syntax.
fn pixels(obj: &DefaultDicomObject) -> Vec<u16> {
    let rows = usize::from(obj.element(tags::ROWS).unwrap().to_int::<u16>().unwrap());
    let cols = usize::from(obj.element(tags::COLUMNS).unwrap().to_int::<u16>().unwrap());
    let pd = obj.element(tags::PIXEL_DATA).unwrap();
    if let Some(fragments) = pd.value().fragments() {
        assert_eq!(fragments.len(), 1);
        return rle_decode(&fragments[0], rows * cols);
    }
    let bytes = pd.to_bytes().unwrap();
    assert_eq!(bytes.len(), rows * cols * 2);
    bytes.chunks_exact(2).map(|b| u16::from_le_bytes([b[0], b[1]])).collect()
}

/// A reference RLE Lossless decoder (PS3.5 G.3.2), independent of the writer.
fn rle_decode(frame: &[u8], n: usize) -> Vec<u16> {
    let segs = u32::from_le_bytes(frame[0..4].try_into().unwrap()) as usize;
    assert_eq!(segs, 2);
    let off = |i: usize| u32::from_le_bytes(frame[4 + 4 * i..8 + 4 * i].try_into().unwrap()) as usize;
    let mut planes = Vec::new();
    for s in 0..2 {
        let end = if s == 0 { off(1) } else { frame.len() };
        let mut src = &frame[off(s)..end];
        let mut out = Vec::with_capacity(n);
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
        assert_eq!(out.len(), n);
        planes.push(out);
    }
    planes[0].iter().zip(&planes[1]).map(|(hi, lo)| u16::from(*hi) << 8 | u16::from(*lo)).collect()
}

#[test]
fn dicom_headers_match_mimic_cxr_and_the_metadata_table() {
    let a = small();
    let meta = Csv::read(&a.root.join(CXR_JPG).join("mimic-cxr-2.0.0-metadata.csv.gz"));
    let mut photometric = HashSet::new();
    let mut syntaxes = HashSet::new();
    let mut windowed = 0;
    for r in &meta.rows {
        let obj = open_file(a.root.join(CXR_DCM).join(path_of(r, "dcm"))).unwrap();
        syntaxes.insert(obj.meta().transfer_syntax().trim_end_matches('\0').to_string());
        assert_eq!(text(&obj, tags::SOP_CLASS_UID), uids::DIGITAL_X_RAY_IMAGE_STORAGE_FOR_PRESENTATION);
        assert_eq!(
            obj.meta().media_storage_sop_class_uid().trim_end_matches('\0'),
            uids::DIGITAL_X_RAY_IMAGE_STORAGE_FOR_PRESENTATION
        );
        assert_eq!(text(&obj, tags::MODALITY), "DX");
        assert_eq!(text(&obj, tags::PATIENT_ID), r[1]);
        assert_eq!(text(&obj, tags::STUDY_DATE), r[7]);
        // TM HHMMSS.fff versus the metadata's unpadded float.
        let tm: f64 = text(&obj, tags::STUDY_TIME).parse().unwrap();
        assert!((tm - r[8].parse::<f64>().unwrap()).abs() < 1e-6, "{tm} vs {}", r[8]);
        assert_eq!(text(&obj, tags::VIEW_POSITION), r[4]);
        assert_eq!(code_meaning(&obj, tags::VIEW_CODE_SEQUENCE).unwrap_or_default(), r[10]);
        assert_eq!(code_meaning(&obj, tags::PATIENT_ORIENTATION_CODE_SEQUENCE).unwrap_or_default(), r[11]);
        assert_eq!(text(&obj, tags::PERFORMED_PROCEDURE_STEP_DESCRIPTION), r[3]);
        assert_eq!(obj.element(tags::ROWS).unwrap().to_int::<u16>().unwrap().to_string(), r[5]);
        assert_eq!(obj.element(tags::COLUMNS).unwrap().to_int::<u16>().unwrap().to_string(), r[6]);
        assert_eq!(obj.element(tags::BITS_ALLOCATED).unwrap().to_int::<u16>().unwrap(), 16);
        assert_eq!(obj.element(tags::BITS_STORED).unwrap().to_int::<u16>().unwrap(), 12);
        assert_eq!(obj.element(tags::SAMPLES_PER_PIXEL).unwrap().to_int::<u16>().unwrap(), 1);
        photometric.insert(text(&obj, tags::PHOTOMETRIC_INTERPRETATION));
        if obj.element_opt(tags::WINDOW_CENTER).unwrap().is_some() {
            windowed += 1;
            assert!(obj.element(tags::WINDOW_WIDTH).unwrap().to_float64().unwrap() > 0.0);
        }
        assert!(pixels(&obj).iter().all(|&v| v < 4096), "12 bits stored");
    }
    assert_eq!(photometric, HashSet::from(["MONOCHROME1".to_string(), "MONOCHROME2".to_string()]));
    assert!(windowed > 0 && windowed < meta.rows.len());
    let expected: HashSet<String> =
        [uids::EXPLICIT_VR_LITTLE_ENDIAN, uids::IMPLICIT_VR_LITTLE_ENDIAN, uids::RLE_LOSSLESS]
            .iter()
            .map(|s| s.to_string())
            .collect();
    assert_eq!(syntaxes, expected);
}

/// The same archive written uncompressed has the same pixels (inverted back for
/// MONOCHROME1), so RLE and implicit-VR files carry exactly the rendered image.
#[test]
fn every_transfer_syntax_carries_the_same_pixels() {
    let a = small();
    let plain = generate(|out| config(out, 40, 7, "2.2", crate::fixture::BOTH));
    let meta = Csv::read(&a.root.join(CXR_JPG).join("mimic-cxr-2.0.0-metadata.csv.gz"));
    let mut checked: HashMap<String, usize> = HashMap::new();
    for r in meta.rows.iter().take(30) {
        let p = path_of(r, "dcm");
        let x = open_file(a.root.join(CXR_DCM).join(&p)).unwrap();
        let y = open_file(plain.root.join(CXR_DCM).join(&p)).unwrap();
        assert_eq!(pixels(&x), pixels(&y), "{p}");
        *checked.entry(x.meta().transfer_syntax().trim_end_matches('\0').to_string()).or_default() += 1;
    }
    assert_eq!(checked.len(), 3, "{checked:?}");
}

#[test]
fn monochrome1_files_store_inverted_intensities() {
    // The JPG shows the display image; MONOCHROME1 pixels are its inverse, MONOCHROME2 equal.
    let a = small();
    let meta = Csv::read(&a.root.join(CXR_JPG).join("mimic-cxr-2.0.0-metadata.csv.gz"));
    let mut seen = HashSet::new();
    for r in &meta.rows {
        let obj = open_file(a.root.join(CXR_DCM).join(path_of(r, "dcm"))).unwrap();
        let mono1 = text(&obj, tags::PHOTOMETRIC_INTERPRETATION) == "MONOCHROME1";
        let jpg = image::open(a.root.join(CXR_JPG).join(path_of(r, "jpg"))).unwrap().to_luma8();
        let px = pixels(&obj);
        let display: Vec<f64> = px.iter().map(|&v| f64::from(if mono1 { 4095 - v } else { v }) / 16.0).collect();
        let mean_abs = display.iter().zip(jpg.as_raw()).map(|(d, j)| (d - f64::from(*j)).abs()).sum::<f64>()
            / display.len() as f64;
        assert!(mean_abs < 4.0, "{}: JPG differs from DICOM display by {mean_abs}", r[0]);
        seen.insert(mono1);
        if seen.len() == 2 {
            return;
        }
    }
    panic!("both photometric interpretations should occur");
}

fn find(bytes: &[u8], pattern: &[u8]) -> Option<usize> {
    bytes.windows(pattern.len()).position(|w| w == pattern)
}

/// Hostile headers are rejects, decided before anything the size of the declared image is
/// allocated: a 65535x65535 image, and pixel data declaring 4 GB in a small file.
#[test]
fn hostile_headers_are_rejected_without_allocating() {
    let root = small().root.join(CXR_DCM);
    let rec = Csv::read(&root.join("cxr-record-list.csv.gz"));
    // An Explicit VR Little Endian file with native (OW) pixel data (the fixture mixes
    // syntaxes, RLE included).
    let (bytes, rows_at) = rec
        .rows
        .iter()
        .map(|r| fs_err::read(root.join(&r[3])).unwrap())
        .filter(|b| find(b, b"\xe0\x7f\x10\x00OW\x00\x00").is_some())
        .find_map(|b| find(&b, b"\x28\x00\x10\x00US\x02\x00").map(|at| (b.clone(), at)))
        .unwrap();
    let dir = tempfile::tempdir().unwrap();

    let mut huge = bytes.clone();
    huge[rows_at + 8..rows_at + 10].copy_from_slice(&[0xff, 0xff]);
    let cols_at = find(&huge, b"\x28\x00\x11\x00US\x02\x00").unwrap();
    huge[cols_at + 8..cols_at + 10].copy_from_slice(&[0xff, 0xff]);
    let path = dir.path().join("huge.dcm");
    fs_err::write(&path, &huge).unwrap();
    let err = pipeline::images::dicom::decode_dicom(&path).unwrap_err();
    assert!(err.contains("absurd size 65535x65535"), "{err}");

    let mut long = bytes.clone();
    let pd = find(&long, b"\xe0\x7f\x10\x00OW\x00\x00").unwrap();
    long[pd + 8..pd + 12].copy_from_slice(&0xffff_fff0u32.to_le_bytes());
    let path = dir.path().join("long.dcm");
    fs_err::write(&path, &long).unwrap();
    let err = pipeline::images::dicom::decode_dicom(&path).unwrap_err();
    assert!(err.contains("not a readable DICOM file") || err.contains("pixel data"), "{err}");
}

/// A PNG declaring 100000x100000 pixels is rejected from its header.
#[test]
fn a_png_declaring_an_absurd_size_is_rejected() {
    let chunk = |png: &mut Vec<u8>, kind: &[u8], data: &[u8]| {
        let mut crc = flate2::Crc::new();
        crc.update(kind);
        crc.update(data);
        png.extend_from_slice(&(data.len() as u32).to_be_bytes());
        png.extend_from_slice(kind);
        png.extend_from_slice(data);
        png.extend_from_slice(&crc.sum().to_be_bytes());
    };
    let mut header = Vec::new();
    header.extend_from_slice(&100_000u32.to_be_bytes());
    header.extend_from_slice(&100_000u32.to_be_bytes());
    header.extend_from_slice(&[8, 0, 0, 0, 0]);
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    chunk(&mut png, b"IHDR", &header);
    chunk(&mut png, b"IDAT", &[0x78, 0x9c, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01]);
    chunk(&mut png, b"IEND", &[]);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("huge.png");
    fs_err::write(&path, &png).unwrap();
    let err = pipeline::images::preprocess::decode_raster(&path).unwrap_err();
    assert!(err.contains("absurd size 100000x100000"), "{err}");
}

/// The Modality LUT Sequence, the VOI LUT Sequence and the VOI LUT Functions LINEAR_EXACT and
/// SIGMOID (PS3.3 C.11.1-C.11.2), on files written here from a generated radiograph: the
/// decoded values equal the standard's formulas applied to the stored pixels.
#[test]
fn lut_sequences_and_voi_functions_follow_the_standard() {
    use dicom_core::value::DataSetSequence;
    use dicom_core::{DataElement, PrimitiveValue, VR};
    use dicom_object::InMemDicomObject;

    let root = small().root.join(CXR_DCM);
    let rec = Csv::read(&root.join("cxr-record-list.csv.gz"));
    // A MONOCHROME2 file with native pixel data and no rescale.
    let obj = rec
        .rows
        .iter()
        .map(|r| root.join(&r[3]))
        .map(|p| open_file(p).unwrap())
        .find(|o| {
            text(o, tags::PHOTOMETRIC_INTERPRETATION) == "MONOCHROME2"
                && o.element(tags::PIXEL_DATA).unwrap().value().fragments().is_none()
                && o.element_opt(tags::RESCALE_SLOPE).unwrap().is_none()
        })
        .expect("a MONOCHROME2 native file without rescale");
    let stored = pixels(&obj);
    assert!(stored.iter().all(|&v| v < 4096));
    let dir = tempfile::tempdir().unwrap();
    let lut_item = |first: u16, bits: u16, data: Vec<u16>| {
        InMemDicomObject::from_element_iter([
            DataElement::new(tags::LUT_DESCRIPTOR, VR::US, PrimitiveValue::from([data.len() as u16, first, bits])),
            DataElement::new(tags::LUT_DATA, VR::OW, PrimitiveValue::U16(data.into())),
        ])
    };
    let ds = |v: f64| PrimitiveValue::from(v.to_string());
    let write = |name: &str, edit: &dyn Fn(&mut DefaultDicomObject)| {
        let mut o = obj.clone();
        o.remove_element(tags::WINDOW_CENTER);
        o.remove_element(tags::WINDOW_WIDTH);
        edit(&mut o);
        let p = dir.path().join(name);
        o.write_to_file(&p).unwrap();
        pipeline::images::dicom::decode_dicom(&p).unwrap_or_else(|e| panic!("{name}: {e}"))
    };
    let check = |name: &str, got: &[f32], want: &dyn Fn(f32) -> f32| {
        let worst = stored.iter().zip(got).map(|(&s, &g)| (want(f32::from(s)) - g).abs()).fold(0.0, f32::max);
        assert!(worst < 1e-4, "{name}: off by {worst}");
    };

    // A non-linear Modality LUT (squares), then a LINEAR window on its output.
    let squares: Vec<u16> = (0..4096u32).map(|i| (i * i / 4096) as u16).collect();
    let g = write("modality-lut.dcm", &|o| {
        o.put(DataElement::new(
            tags::MODALITY_LUT_SEQUENCE,
            VR::SQ,
            DataSetSequence::from(vec![lut_item(0, 16, squares.clone())]),
        ));
        o.put(DataElement::new(tags::WINDOW_CENTER, VR::DS, ds(1000.0)));
        o.put(DataElement::new(tags::WINDOW_WIDTH, VR::DS, ds(1500.0)));
    });
    check("modality LUT", &g.data, &|s| {
        let m = (s * s / 4096.0).floor();
        ((m - 999.5) / 1499.0 + 0.5).clamp(0.0, 1.0)
    });
    assert_eq!(g.voi, "window, LINEAR");

    // A VOI LUT Sequence (8-bit output) wins over a window.
    let gamma: Vec<u16> = (0..4096u32).map(|i| ((i as f32 / 4095.0).sqrt() * 255.0).round() as u16).collect();
    let g = write("voi-lut.dcm", &|o| {
        o.put(DataElement::new(
            tags::VOILUT_SEQUENCE,
            VR::SQ,
            DataSetSequence::from(vec![lut_item(0, 8, gamma.clone())]),
        ));
        o.put(DataElement::new(tags::WINDOW_CENTER, VR::DS, ds(100.0)));
        o.put(DataElement::new(tags::WINDOW_WIDTH, VR::DS, ds(10.0)));
    });
    check("VOI LUT", &g.data, &|s| ((s / 4095.0).sqrt() * 255.0).round() / 255.0);
    assert_eq!(g.voi, "VOI LUT Sequence", "the path taken is recorded");

    // SIGMOID and LINEAR_EXACT windows.
    for (function, want) in [
        ("SIGMOID", &(|s: f32| 1.0 / (1.0 + (-4.0 * (s - 2048.0) / 1000.0).exp())) as &dyn Fn(f32) -> f32),
        ("LINEAR_EXACT", &|s: f32| ((s - 2048.0) / 1000.0 + 0.5).clamp(0.0, 1.0)),
    ] {
        let g = write(&format!("{function}.dcm"), &|o| {
            o.put(DataElement::new(tags::WINDOW_CENTER, VR::DS, ds(2048.0)));
            o.put(DataElement::new(tags::WINDOW_WIDTH, VR::DS, ds(1000.0)));
            o.put(DataElement::new(tags::VOILUT_FUNCTION, VR::CS, PrimitiveValue::from(function)));
        });
        check(function, &g.data, want);
        assert_eq!(g.voi, format!("window, {function}"));
    }
    // A VOI LUT Sequence element that is not a sequence is a reject, not "no LUT".
    let p = dir.path().join("not-a-sequence.dcm");
    let mut o = obj.clone();
    o.put(DataElement::new(tags::VOILUT_SEQUENCE, VR::OB, PrimitiveValue::from(vec![1u8, 2])));
    o.write_to_file(&p).unwrap();
    let err = pipeline::images::dicom::decode_dicom(&p).unwrap_err();
    assert!(err.contains("VOI LUT Sequence") && err.contains("not a sequence"), "{err}");
    // A LUT Descriptor that does not match its data is a reject naming the sequence.
    let p = dir.path().join("bad-lut.dcm");
    let mut o = obj.clone();
    o.put(DataElement::new(
        tags::MODALITY_LUT_SEQUENCE,
        VR::SQ,
        DataSetSequence::from(vec![lut_item(0, 16, vec![1, 2])]),
    ));
    if let Some(mut item) = o.element(tags::MODALITY_LUT_SEQUENCE).unwrap().items().map(|i| i[0].clone()) {
        item.put(DataElement::new(tags::LUT_DESCRIPTOR, VR::US, PrimitiveValue::from([4096u16, 0, 16])));
        o.put(DataElement::new(tags::MODALITY_LUT_SEQUENCE, VR::SQ, DataSetSequence::from(vec![item])));
    }
    o.write_to_file(&p).unwrap();
    let err = pipeline::images::dicom::decode_dicom(&p).unwrap_err();
    assert!(err.contains("Modality LUT Sequence") && err.contains("2 LUT entries for 4096"), "{err}");
}
