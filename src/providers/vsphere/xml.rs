//! The XML half of the vim25 SOAP client: a small element tree read with `quick-xml`, the
//! escaping used to build request envelopes by hand, and writing an element back out (a
//! device read from a template is sent back, edited, in a clone spec).
//!
//! Only `soap`, `props`, `ovf` and the provider in this folder use it.

use std::fmt::Write as _;

use quick_xml::events::Event;
use quick_xml::name::ResolveResult;
use quick_xml::NsReader;

/// XML Schema instance namespace: its `type` attribute carries the vim25 data object type.
const XSI_NS: &[u8] = b"http://www.w3.org/2001/XMLSchema-instance";

/// Deepest element nesting accepted; vim25 answers nest about 15 levels.
const MAX_DEPTH: usize = 256;

/// One element: local name, plain attributes, `xsi:type`, child elements and text.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Element {
    /// Local name (namespace prefix dropped).
    pub name: String,
    /// Attributes other than `xsi:type` and namespace declarations, by local name.
    pub attrs: Vec<(String, String)>,
    /// Value of `xsi:type` without its prefix (`VirtualDisk`, `string`).
    pub xsi_type: Option<String>,
    /// Child elements in document order.
    pub children: Vec<Element>,
    /// Concatenated text content (unescaped).
    pub text: String,
}

/// The document could not be read as XML.
#[derive(Debug, thiserror::Error)]
#[error("malformed XML at byte {position}: {message}")]
pub struct ParseError {
    /// Byte offset where reading stopped.
    pub position: u64,
    /// What the reader found wrong.
    pub message: String,
}

/// Parse a whole document and return its root element.
pub fn parse(doc: &str) -> Result<Element, ParseError> {
    let mut reader = NsReader::from_str(doc);
    reader.config_mut().trim_text(false);
    let mut stack: Vec<Element> = Vec::new();
    let mut root: Option<Element> = None;
    let fail = |reader: &NsReader<&[u8]>, message: String| ParseError {
        position: reader.buffer_position(),
        message,
    };
    loop {
        let event = reader
            .read_event()
            .map_err(|e| fail(&reader, e.to_string()))?;
        let empty = matches!(event, Event::Empty(_));
        match event {
            Event::Start(start) | Event::Empty(start) => {
                let mut el = Element {
                    name: String::from_utf8_lossy(start.local_name().as_ref()).into_owned(),
                    ..Element::default()
                };
                for attr in start.attributes() {
                    let attr = attr.map_err(|e| fail(&reader, e.to_string()))?;
                    let key = attr.key;
                    if key.as_namespace_binding().is_some() {
                        continue;
                    }
                    let value = attr
                        .unescape_value()
                        .map_err(|e| fail(&reader, e.to_string()))?
                        .into_owned();
                    let (ns, local) = reader.resolve_attribute(key);
                    let local = String::from_utf8_lossy(local.as_ref()).into_owned();
                    match ns {
                        ResolveResult::Bound(ns) if ns.as_ref() == XSI_NS && local == "type" => {
                            let bare = value.rsplit(':').next().unwrap_or(&value).to_string();
                            el.xsi_type = Some(bare);
                        }
                        _ => el.attrs.push((local, value)),
                    }
                }
                if empty {
                    attach(&mut stack, &mut root, el);
                } else {
                    if stack.len() >= MAX_DEPTH {
                        return Err(fail(&reader, "elements nest too deeply".into()));
                    }
                    stack.push(el);
                }
            }
            Event::End(_) => {
                let el = stack
                    .pop()
                    .ok_or_else(|| fail(&reader, "closing tag without opening tag".into()))?;
                attach(&mut stack, &mut root, el);
            }
            Event::Text(t) => {
                if let Some(top) = stack.last_mut() {
                    let text = t.unescape().map_err(|e| fail(&reader, e.to_string()))?;
                    top.text.push_str(&text);
                }
            }
            Event::CData(c) => {
                if let Some(top) = stack.last_mut() {
                    top.text.push_str(&String::from_utf8_lossy(&c.into_inner()));
                }
            }
            Event::Eof => break,
            _ => {}
        }
    }
    if !stack.is_empty() {
        return Err(fail(&reader, "document ends inside an element".into()));
    }
    root.ok_or_else(|| fail(&reader, "no root element".into()))
}

fn attach(stack: &mut [Element], root: &mut Option<Element>, el: Element) {
    match stack.last_mut() {
        Some(parent) => parent.children.push(el),
        None => {
            if root.is_none() {
                *root = Some(el);
            }
        }
    }
}

impl Element {
    /// First child with this local name.
    pub fn child(&self, name: &str) -> Option<&Element> {
        self.children.iter().find(|c| c.name == name)
    }

    /// First child with this local name, mutable.
    pub fn child_mut(&mut self, name: &str) -> Option<&mut Element> {
        self.children.iter_mut().find(|c| c.name == name)
    }

    /// Every child with this local name.
    pub fn children_named<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Element> + 'a {
        self.children.iter().filter(move |c| c.name == name)
    }

    /// Follow a path of child names.
    pub fn path(&self, names: &[&str]) -> Option<&Element> {
        names.iter().try_fold(self, |el, n| el.child(n))
    }

    /// Text of the child with this name, if present.
    pub fn child_text(&self, name: &str) -> Option<&str> {
        self.child(name).map(|c| c.text.as_str())
    }

    /// Value of a plain attribute.
    pub fn attr(&self, name: &str) -> Option<&str> {
        self.attrs
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// Depth-first search for the first descendant (or self) with this local name.
    pub fn find(&self, name: &str) -> Option<&Element> {
        if self.name == name {
            return Some(self);
        }
        self.children.iter().find_map(|c| c.find(name))
    }

    /// Set the text of the child `name`, appending the child when missing.
    pub fn set_child_text(&mut self, name: &str, text: &str) {
        match self.child_mut(name) {
            Some(c) => c.text = text.to_string(),
            None => self.children.push(Element {
                name: name.to_string(),
                text: text.to_string(),
                ..Element::default()
            }),
        }
    }

    /// Write the element as vim25 XML, renamed to `tag` (a device read as `VirtualDevice`
    /// inside an array is sent back as `device`). The envelope declares the `xsi` and `xsd`
    /// prefixes this uses.
    pub fn write_as(&self, tag: &str, out: &mut String) {
        out.push('<');
        out.push_str(tag);
        for (k, v) in &self.attrs {
            let _ = write!(out, " {k}=\"{}\"", escape(v));
        }
        if let Some(t) = &self.xsi_type {
            // Only XML Schema built-ins (string, int, ...) are prefixed in vim25 payloads.
            let prefixed = matches!(
                t.as_str(),
                "string"
                    | "int"
                    | "long"
                    | "short"
                    | "byte"
                    | "boolean"
                    | "float"
                    | "double"
                    | "dateTime"
                    | "base64Binary"
            );
            let _ = write!(
                out,
                " xsi:type=\"{}{}\"",
                if prefixed { "xsd:" } else { "" },
                escape(t)
            );
        }
        out.push('>');
        out.push_str(&escape(&self.text));
        for c in &self.children {
            c.write_as(&c.name, out);
        }
        out.push_str("</");
        out.push_str(tag);
        out.push('>');
    }
}

/// Escape text for an element body or a double-quoted attribute. Characters XML 1.0 cannot
/// carry at all (most C0 controls) are dropped: no vim25 string needs them, and sending them
/// would make the whole request unreadable to the server.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            '\t' | '\n' | '\r' => out.push(c),
            c if (c as u32) < 0x20 || c == '\u{FFFE}' || c == '\u{FFFF}' => {}
            c => out.push(c),
        }
    }
    out
}

/// `<tag>escaped text</tag>`.
pub fn text_el(tag: &str, text: &str) -> String {
    format!("<{tag}>{}</{tag}>", escape(text))
}

/// The SOAP 1.1 envelope around one vim25 request element.
pub fn envelope(request: &str) -> String {
    format!(
        concat!(
            r#"<?xml version="1.0" encoding="UTF-8"?>"#,
            r#"<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" "#,
            r#"xmlns:xsd="http://www.w3.org/2001/XMLSchema" "#,
            r#"xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">"#,
            r#"<soapenv:Body>{}</soapenv:Body></soapenv:Envelope>"#
        ),
        request
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup_quotes_and_drops_controls() {
        assert_eq!(
            escape(r#"a<b>&"c"'d'"#),
            "a&lt;b&gt;&amp;&quot;c&quot;&apos;d&apos;"
        );
        assert_eq!(escape("x\u{0}y\u{7}z\n"), "xyz\n");
        assert_eq!(
            text_el("name", "R&D <lab>"),
            "<name>R&amp;D &lt;lab&gt;</name>"
        );
    }

    #[test]
    fn envelope_round_trips_escaped_text() {
        let doc = envelope(&format!(
            r#"<Login xmlns="urn:vim25">{}</Login>"#,
            text_el("password", "p&<>\"'ss")
        ));
        let root = parse(&doc).expect("parse");
        assert_eq!(root.name, "Envelope");
        let login = root.path(&["Body", "Login"]).expect("login");
        assert_eq!(login.child_text("password"), Some("p&<>\"'ss"));
    }

    #[test]
    fn reads_xsi_type_under_any_prefix_and_morefs() {
        let doc = r#"<?xml version="1.0"?><r xmlns="urn:vim25"><val xmlns:X="http://www.w3.org/2001/XMLSchema-instance" X:type="ArrayOfVirtualDevice"><VirtualDevice X:type="VirtualDisk"><key>2000</key><backing X:type="VirtualDiskFlatVer2BackingInfo"><datastore type="Datastore">datastore-1</datastore></backing><capacityInKB>1024</capacityInKB></VirtualDevice></val><v xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" xsi:type="xsd:string">a &amp; b</v><e/></r>"#;
        let root = parse(doc).expect("parse");
        let val = root.child("val").expect("val");
        assert_eq!(val.xsi_type.as_deref(), Some("ArrayOfVirtualDevice"));
        let disk = val.child("VirtualDevice").expect("device");
        assert_eq!(disk.xsi_type.as_deref(), Some("VirtualDisk"));
        let ds = disk.path(&["backing", "datastore"]).expect("ds");
        assert_eq!(ds.attr("type"), Some("Datastore"));
        assert_eq!(ds.text, "datastore-1");
        let v = root.child("v").expect("v");
        assert_eq!(
            (v.xsi_type.as_deref(), v.text.as_str()),
            (Some("string"), "a & b")
        );
        assert!(root.child("e").is_some());
    }

    #[test]
    fn writes_an_edited_device_back_with_its_types() {
        let doc = r#"<VirtualDevice xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" xsi:type="VirtualDisk"><key>2000</key><backing xsi:type="VirtualDiskFlatVer2BackingInfo"><fileName>[ds] a&amp;b.vmdk</fileName></backing><capacityInKB>1024</capacityInKB></VirtualDevice>"#;
        let mut disk = parse(doc).expect("parse");
        disk.set_child_text("capacityInKB", "20971520");
        let mut out = String::new();
        disk.write_as("device", &mut out);
        assert_eq!(
            out,
            r#"<device xsi:type="VirtualDisk"><key>2000</key><backing xsi:type="VirtualDiskFlatVer2BackingInfo"><fileName>[ds] a&amp;b.vmdk</fileName></backing><capacityInKB>20971520</capacityInKB></device>"#
        );
    }

    #[test]
    fn rejects_malformed_documents() {
        assert!(parse("<a><b></a>").is_err());
        assert!(parse("<a>").is_err());
        assert!(parse("").is_err());
        let deep = "<a>".repeat(MAX_DEPTH + 1);
        assert!(parse(&deep).is_err());
    }
}
