//! Hostile input through a real client: bytes that are not protobuf, request entities in a cycle, a
//! type name of a megabyte, duplicate JSON keys. Each gets INVALID_ARGUMENT naming what is wrong,
//! never INTERNAL, never a decision.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use bytes::{Buf, BufMut};
use cedar_pdp::grpc::pb;
use common::*;
use serde_json::json;
use tonic::Code;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};

/// Sends bytes as they are, as a gRPC message: what a broken or malicious client can put on the wire.
#[derive(Default)]
struct Raw;

impl Codec for Raw {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = Raw;
    type Decoder = Raw;

    fn encoder(&mut self) -> Raw {
        Raw
    }

    fn decoder(&mut self) -> Raw {
        Raw
    }
}

impl Encoder for Raw {
    type Item = Vec<u8>;
    type Error = tonic::Status;

    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for Raw {
    type Item = Vec<u8>;
    type Error = tonic::Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, tonic::Status> {
        let bytes = src.copy_to_bytes(src.remaining());
        Ok(Some(bytes.to_vec()))
    }
}

async fn send_raw(server: &TestServer, path: &'static str, body: Vec<u8>) -> tonic::Status {
    let mut grpc = tonic::client::Grpc::new(server.channel().await);
    grpc.ready().await.unwrap();
    let path = tonic::codegen::http::uri::PathAndQuery::from_static(path);
    match grpc.unary(tonic::Request::new(body), path, Raw).await {
        Ok(_) => tonic::Status::ok(""),
        Err(status) => status,
    }
}

#[tokio::test]
async fn bytes_that_are_not_protobuf_are_invalid_argument_naming_the_request() {
    let server = TestServer::start(&example_policies()).await;
    // A field header promising more bytes than follow; a varint that never ends; a wrong wire type.
    let hand_built: [Vec<u8>; 4] = [vec![0x0a, 0x20, b'x'], vec![0x08, 0xff, 0xff], vec![0x0b], vec![0x0a, 0xff]];
    for body in hand_built {
        let status = send_raw(&server, "/cedar_pdp.v1.AuthorizationService/Check", body.clone()).await;
        assert_eq!(status.code(), Code::InvalidArgument, "{body:?}: {status:?}");
        assert!(status.message().starts_with("the `Check` request is not a valid protobuf message"), "{status:?}");
    }
    let status = send_raw(&server, "/cedar_pdp.v1.EntityService/UpsertEntities", vec![0x0a, 0x05, 0x0a]).await;
    assert!(status.message().contains("`UpsertEntities` request"), "{status:?}");
    // Random bodies: many do not decode, and those that do are requests missing their fields.
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    for n in 0..300 {
        let len = (n % 40) + 1;
        let body: Vec<u8> = (0..len)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                seed as u8
            })
            .collect();
        let status = send_raw(&server, "/cedar_pdp.v1.AuthorizationService/Check", body.clone()).await;
        assert_eq!(status.code(), Code::InvalidArgument, "{body:?}: {status:?}");
    }
}

#[tokio::test]
async fn request_entities_in_a_parent_cycle_are_invalid_argument() {
    let server = TestServer::start(&example_policies()).await;
    // Something provisioned, so that the decision takes the store's path.
    let mut client = server.entities(None).await;
    let zoe = entity(r#"User::"zoe""#, json!({"name": "Zoe", "suspended": false}), &[]);
    client.upsert_entities(pb::UpsertEntitiesRequest { entities: vec![zoe], ..Default::default() }).await.unwrap();
    let folder = |id: &str, parent: &str| json!({"uid": {"type": "Folder", "id": id}, "attrs": {}, "parents": [{"type": "Folder", "id": parent}]});
    let cycle = json!([folder("x1", "x2"), folder("x2", "x3"), folder("x3", "x1")]).to_string();
    let mut request = req(r#"User::"zoe""#, r#"Action::"view""#, r#"Document::"design-doc""#);
    request.entities_json = cycle;
    let err = server.check(request).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("`entities_json`") && err.message().contains("its own ancestor"), "{err:?}");
}

#[tokio::test]
async fn a_huge_echoed_input_is_cut_so_the_error_still_arrives() {
    let server = TestServer::start(&example_policies()).await;
    let mut request = req(r#"User::"alice""#, r#"Action::"view""#, r#"Document::"design-doc""#);
    request.principal.as_mut().unwrap().r#type = "T".repeat(1 << 20);
    let err = server.check(request).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{:?}", err.code());
    assert!(err.message().contains("`principal.type`"), "{}", &err.message()[..100]);
    assert!(err.message().len() < 1000 && err.message().contains("more characters]"), "{}", err.message().len());
}

#[tokio::test]
async fn duplicate_json_keys_are_refused_naming_the_key() {
    let server = TestServer::start(&example_policies()).await;
    // The confidential document needs mfa; a gateway that read the first `mfa` saw false.
    let base = req(r#"User::"alice""#, r#"Action::"view""#, r#"Document::"design-doc""#);
    for context in
        [r#"{"mfa": false, "mfa": true}"#, r#"{"source_ip": "10.0.0.1", "mfa": true, "source_ip": "1.2.3.4"}"#]
    {
        let err =
            server.check(req_ctx(r#"User::"alice""#, r#"Action::"view""#, r#"Document::"design-doc""#, context)).await;
        let err = err.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
        assert!(err.message().contains("`context_json`") && err.message().contains("duplicate key"), "{err:?}");
    }
    let mut request = base.clone();
    request.entities_json =
        r#"[{"uid": {"type": "Folder", "id": "n"}, "attrs": {}, "parents": [], "parents": []}]"#.into();
    let err = server.check(request).await.unwrap_err();
    assert!(err.message().contains("`entities_json`") && err.message().contains("duplicate key `parents`"), "{err:?}");

    let mut client = server.entities(None).await;
    let mut sneaky = entity(r#"User::"zed""#, json!({}), &[]);
    sneaky.attrs_json = r#"{"name": "Zed", "suspended": true, "suspended": false}"#.into();
    let err = client
        .upsert_entities(pb::UpsertEntitiesRequest { entities: vec![sneaky], ..Default::default() })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("`entities[0].attrs_json`") && err.message().contains("`suspended`"), "{err:?}");
}
