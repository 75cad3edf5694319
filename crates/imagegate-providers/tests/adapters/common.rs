//! Fixtures shared by the adapter tests.

use base64::Engine as _;
use imagegate_core::Size;
use imagegate_providers::ProviderRequest;
use wiremock::{Mock, MockServer, ResponseTemplate};

/// A small, valid PNG of one colour: what a provider sends back.
pub fn png(width: u32, height: u32) -> Vec<u8> {
    let img = image::RgbImage::from_pixel(width, height, image::Rgb([200, 30, 30]));
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png)
        .expect("encode png");
    out.into_inner()
}

pub fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// The request every adapter test sends, at `model` and `width`x`height`.
pub fn request(model: &str, width: u32, height: u32) -> ProviderRequest {
    ProviderRequest {
        prompt: "a red fox in snow".into(),
        negative_prompt: Some("blurry".into()),
        model: model.into(),
        size: Size { width, height },
        seed: 42,
    }
}

/// A server that answers every request with `template`.
pub async fn answering(template: ResponseTemplate) -> MockServer {
    let server = MockServer::start().await;
    Mock::given(wiremock::matchers::any())
        .respond_with(template)
        .mount(&server)
        .await;
    server
}

/// Waits (up to a second) until `server` has received one request matching `which`:
/// for requests an adapter sends on a task of its own, such as a cancel.
pub async fn received_one(server: &MockServer, which: impl Fn(&wiremock::Request) -> bool) -> bool {
    for _ in 0..50 {
        let got = server.received_requests().await.expect("recording on");
        if got.iter().filter(|r| which(r)).count() == 1 {
            return true;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    false
}
