package load

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"os"
	"regexp"
	"strconv"
	"syscall"
	"time"
)

// Error classes: the fixed values of the error label. Raw error strings never become labels.
const (
	ClassNone    = "none"
	ClassRefused = "refused"
	ClassReset   = "reset"
	ClassEOF     = "eof"
	ClassTimeout = "timeout"
	ClassHTTP4xx = "http_4xx"
	ClassHTTP5xx = "http_5xx"
	ClassOther   = "other"
)

// Classes lists every error class, in report order.
var Classes = []string{ClassNone, ClassRefused, ClassReset, ClassEOF, ClassTimeout, ClassHTTP4xx, ClassHTTP5xx, ClassOther}

// ErrorClasses lists the classes that count as errors, in report order.
var ErrorClasses = Classes[1:]

// classifyError puts a transport error into a class by what it is, not by its text.
func classifyError(err error) string {
	var netErr net.Error
	switch {
	case err == nil:
		return ClassNone
	case errors.Is(err, syscall.ECONNREFUSED):
		return ClassRefused
	case errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.EPIPE), errors.Is(err, syscall.ECONNABORTED):
		return ClassReset
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return ClassEOF
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, os.ErrDeadlineExceeded),
		errors.As(err, &netErr) && netErr.Timeout():
		return ClassTimeout
	}
	return ClassOther
}

// classifiedError carries the class of a transport error, and the route the connection took when known, through
// vegeta, which keeps only error strings.
type classifiedError struct {
	class string
	route Route
	err   error
}

func (e *classifiedError) Error() string {
	tag := e.class
	if e.route.Endpoint != "" || e.route.Pod != "" {
		tag += "@" + e.route.String()
	}
	return "[" + tag + "] " + e.err.Error()
}
func (e *classifiedError) Unwrap() error { return e.err }

var classTag = regexp.MustCompile(`\[(refused|reset|eof|timeout|other)(?:@([^\]\s]+))?\]`)

// RouteOf is the route a failed request's connection took, when the transport knew it: from the error's tag, or
// from the response's route header.
func RouteOf(errText string, headers http.Header) Route {
	if m := classTag.FindStringSubmatch(errText); m != nil && m[2] != "" {
		return ParseRoute(m[2])
	}
	return routeOfResponse(headers)
}

// Classify returns the class of one vegeta result from its status code and its error string.
func Classify(code uint16, errText string) string {
	if m := classTag.FindStringSubmatch(errText); m != nil {
		return m[1]
	}
	switch {
	case code >= 500:
		return ClassHTTP5xx
	case code >= 400:
		return ClassHTTP4xx
	case code >= 200 && code < 400 && errText == "":
		return ClassNone
	case code == 0 && errText == "":
		return ClassNone
	}
	// An error the transport did not see (vegeta's own), or an unexpected status such as 1xx.
	return ClassOther
}

// CodeLabel is the code label: the HTTP status, or 0 when no response came.
func CodeLabel(code uint16) string { return strconv.Itoa(int(code)) }

// classifyingTransport bounds each request by timeout, headers and body together, and tags every transport error,
// those of reading the body included, with its class. It keeps the timeout itself rather than leaving it to
// http.Client, whose timer races the context and then reports a plain cancellation.
type classifyingTransport struct {
	next    http.RoundTripper
	timeout time.Duration
}

func (t classifyingTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	ctx, cancel := req.Context(), context.CancelFunc(func() {})
	if t.timeout > 0 {
		ctx, cancel = context.WithTimeout(ctx, t.timeout)
	}
	// Which Pod the connection reached: the lab's dataplane picks one per connection, like DNAT, and tells it on
	// the connection; a dial that failed tells it through the sink.
	sink := &routeSink{}
	var conn net.Conn
	traced := httptrace.WithClientTrace(context.WithValue(ctx, routeSinkKey{}, sink), &httptrace.ClientTrace{GotConn: func(info httptrace.GotConnInfo) {
		conn = info.Conn
	}})
	route := func() Route {
		if routed, ok := conn.(*RoutedConn); ok {
			return routed.Route()
		}
		if r := sink.get(); r != (Route{}) {
			return r
		}
		if conn != nil {
			return Route{Endpoint: conn.RemoteAddr().String()}
		}
		return Route{}
	}
	resp, err := t.next.RoundTrip(req.WithContext(traced))
	if err != nil {
		cancel()
		r := route()
		var opErr *net.OpError
		if r.Endpoint == "" && errors.As(err, &opErr) && opErr.Addr != nil {
			r.Endpoint = opErr.Addr.String()
		}
		return nil, &classifiedError{class: classifyRequestError(ctx, err), route: r, err: err}
	}
	// Every outcome names its Pod (in-flight counts at SIGTERM need the successes too); a 502 of a balancer is
	// attributed through it.
	if r := route(); r != (Route{}) {
		resp.Header.Set(RouteHeader, r.String())
	}
	resp.Body = classifyingBody{ReadCloser: resp.Body, ctx: ctx, cancel: cancel, route: route}
	return resp, nil
}

// classifyRequestError also looks at the request's context: when the client's timeout cancels a request, the
// transport reports a cancellation, not a timeout.
func classifyRequestError(ctx context.Context, err error) string {
	if errors.Is(ctx.Err(), context.DeadlineExceeded) {
		return ClassTimeout
	}
	return classifyError(err)
}

type classifyingBody struct {
	io.ReadCloser
	ctx    context.Context
	cancel context.CancelFunc
	route  func() Route
}

func (b classifyingBody) Close() error {
	defer b.cancel()
	return b.ReadCloser.Close()
}

func (b classifyingBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	if err != nil && err != io.EOF {
		return n, &classifiedError{class: classifyRequestError(b.ctx, err), route: b.route(), err: err}
	}
	return n, err
}
