// One client connection of the gateway's HTTP server (serve/http_server.h), as a Boost.Beast
// state machine on its own strand: wait for a request (idle deadline), read its headers (header
// deadline, size limit), refuse early what must be refused (Content-Length with chunked, a
// declared body over the limit, a missing API key), read the body (body deadline, limit that
// holds for chunked bodies too), answer, and only then read the next request, so pipelined
// requests are answered in order from the bytes already buffered. Completions are opened on the
// worker pool; the engine's events wake the connection up (no thread waits on a request), and
// while a request runs the socket is watched so a client that hangs up has its request
// cancelled.
#pragma once

#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/thread_pool.hpp>
#include <memory>

namespace alem::serve {

class HttpServer;

class HttpConnection;

// Starts serving `socket` (whose executor must be a strand). The server keeps the returned
// pointer weakly, to abandon the connection at stop().
std::shared_ptr<HttpConnection> start_http_connection(HttpServer& server,
                                                      boost::asio::thread_pool& workers,
                                                      boost::asio::ip::tcp::socket socket,
                                                      bool api_port);

// After the I/O threads have stopped: closes the socket and ends (cancels) the connection's
// completion, if any, so nothing is left to reach the engine. Not thread-safe with the I/O.
void abandon_http_connection(HttpConnection& connection);

}  // namespace alem::serve
