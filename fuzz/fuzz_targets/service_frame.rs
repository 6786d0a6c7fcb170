//! The service protocol's frame decoder: every line a service or the kernel receives
//! goes through `decode_frame`, then the method's closed enum. Neither may panic, and an
//! answer the decoder produced must survive being encoded and decoded again.

#![no_main]

use aos_sdk::protocol::service::{
    Frame, KernelNotification, KernelRequest, ServiceRequest, decode_frame, encode_response,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The transport splits lines on bytes; the decoder sees text.
    let text = String::from_utf8_lossy(data);
    match decode_frame(&text) {
        Ok(Frame::Request { id, method, params }) => {
            // Either side may receive a request: services get the kernel's, the kernel
            // gets the service's.
            if let Ok(request) = ServiceRequest::parse(&method, params.clone()) {
                let again = ServiceRequest::parse(request.method(), request.params())
                    .expect("a parsed service request re-parses from its own params");
                assert_eq!(request, again);
            }
            if let Ok(request) = KernelRequest::parse(&method, params) {
                let again = KernelRequest::parse(request.method(), request.params())
                    .expect("a parsed kernel request re-parses from its own params");
                assert_eq!(request, again);
            }
            let _ = id;
        }
        Ok(Frame::Notification { method, params }) => {
            let _ = KernelNotification::parse(&method, params);
        }
        Ok(Frame::Response { id, result }) => {
            let wire = encode_response(Some(&id), &result);
            match decode_frame(&wire) {
                Ok(Frame::Response {
                    id: again,
                    result: decoded,
                }) => {
                    assert_eq!(id, again);
                    assert_eq!(result.is_ok(), decoded.is_ok());
                }
                other => panic!("an encoded response decoded as {other:?}"),
            }
        }
        Err(error) => {
            // The error is sent back as is; with an id it must decode as an answer.
            let wire = encode_response(error.id.as_ref(), &Err(error.error.clone()));
            if let Some(id) = &error.id {
                match decode_frame(&wire) {
                    Ok(Frame::Response {
                        id: again,
                        result: Err(_),
                    }) => assert_eq!(*id, again),
                    other => panic!("an encoded error answer decoded as {other:?}"),
                }
            }
        }
    }
});
