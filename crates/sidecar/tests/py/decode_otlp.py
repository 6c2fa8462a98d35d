"""Decodes an OTLP ExportTraceServiceRequest (binary file argv[1]) with the
opentelemetry-proto package and prints its spans as JSON lines."""
import json
import sys

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

req = ExportTraceServiceRequest()
req.ParseFromString(open(sys.argv[1], "rb").read())
for rs in req.resource_spans:
    service = next(a.value.string_value for a in rs.resource.attributes if a.key == "service.name")
    for ss in rs.scope_spans:
        for s in ss.spans:
            print(json.dumps({
                "service": service,
                "trace_id": s.trace_id.hex(),
                "span_id": s.span_id.hex(),
                "parent_span_id": s.parent_span_id.hex(),
                "name": s.name,
                "kind": s.kind,
                "start": s.start_time_unix_nano,
                "end": s.end_time_unix_nano,
                "attributes": {a.key: a.value.string_value for a in s.attributes},
                "status": s.status.code,
            }))
