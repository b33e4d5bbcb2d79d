//! One module per plugin: its config type, its decision, its tests.

pub mod admin_secret;
pub mod bot_control;
pub mod geo;
pub mod ip_reputation;
pub mod jwt;
pub mod origin_verify;
pub mod owasp;
pub mod rate_limit;

#[cfg(test)]
pub(crate) mod testing {
    use std::net::IpAddr;

    use http::{HeaderMap, HeaderName, HeaderValue, Method};

    use crate::RequestView;

    /// An owned request, from which tests borrow a [`RequestView`].
    pub struct TestRequest {
        pub peer: IpAddr,
        pub path: String,
        pub headers: HeaderMap,
        pub method: Method,
        pub query: Option<String>,
    }

    impl TestRequest {
        pub fn new(peer: &str, path: &str) -> Self {
            TestRequest {
                peer: peer.parse().expect("test peer"),
                path: path.to_string(),
                headers: HeaderMap::new(),
                method: Method::GET,
                query: None,
            }
        }

        pub fn query(mut self, query: &str) -> Self {
            self.query = Some(query.to_string());
            self
        }

        pub fn header(mut self, name: &str, value: &str) -> Self {
            self.headers.append(
                HeaderName::from_bytes(name.as_bytes()).expect("test header"),
                HeaderValue::from_str(value).expect("test value"),
            );
            self
        }

        pub fn view(&self) -> RequestView<'_> {
            RequestView {
                listener: "test",
                route: "test",
                peer: self.peer,
                client: self.peer,
                method: &self.method,
                path: &self.path,
                query: self.query.as_deref(),
                headers: &self.headers,
                consumed: &[],
                body: None,
                body_items: &[],
                identity: None,
                inspections: None,
            }
        }
    }
}
