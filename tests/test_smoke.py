from chunkstore.testing import Server


def test_healthz_answers_without_a_token(server: Server) -> None:
    with server.client(owner=None) as client:
        assert client.get("/healthz").json() == {"status": "ok"}
