#include "common/metrics.h"

#include <httplib.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <thread>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "common/listen.h"

namespace shardserve {

const std::vector<double> kFirstTokenBuckets = {0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08,
                                                0.1,   0.25,  0.5,  0.75, 1.0,  2.5,  5.0,
                                                7.5,   10.0,  20.0, 40.0, 80.0, 160.0};
const std::vector<double> kTokenBuckets = {0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
                                           0.075,  0.1,   0.15,   0.2,   0.3,  0.4,   0.5,
                                           0.75,   1.0,   2.5,    5.0,   10.0, 20.0};
const std::vector<double> kRequestBuckets = {0.3,  0.5,  0.8,  1.0,  1.5,  2.0,   2.5,
                                             5.0,  10.0, 15.0, 20.0, 30.0, 40.0,  50.0,
                                             60.0, 120., 240., 480., 960., 1920., 7680.};

namespace {

std::string FormatValue(double v) {
  if (std::isinf(v)) return v > 0 ? "+Inf" : "-Inf";
  if (std::isnan(v)) return "NaN";
  char buf[64];
  std::snprintf(buf, sizeof(buf), "%.17g", v);
  return buf;
}

std::string EscapeLabel(const std::string& v) {
  std::string out;
  for (char c : v) {
    if (c == '\\' || c == '"') {
      out += '\\';
      out += c;
    } else if (c == '\n') {
      out += "\\n";
    } else {
      out += c;
    }
  }
  return out;
}

std::string LabelText(const MetricLabels& labels) {
  if (labels.empty()) return "";
  std::string out = "{";
  for (size_t i = 0; i < labels.size(); ++i) {
    if (i > 0) out += ',';
    absl::StrAppend(&out, labels[i].first, "=\"", EscapeLabel(labels[i].second), "\"");
  }
  return out + "}";
}
}  // namespace

Histogram::Histogram(std::vector<double> upper_bounds)
    : bounds_(std::move(upper_bounds)), counts_(bounds_.size() + 1, 0) {}

void Histogram::Observe(double value) {
  size_t i = 0;
  while (i < bounds_.size() && value > bounds_[i]) ++i;
  absl::MutexLock lock(&mu_);
  ++counts_[i];
  sum_ += value;
  ++count_;
}

Histogram::Snapshot Histogram::Read() const {
  absl::MutexLock lock(&mu_);
  return {bounds_, counts_, sum_, count_};
}

RecentWindow::RecentWindow(size_t capacity, absl::Duration window)
    : capacity_(capacity), window_(window) {}

void RecentWindow::Observe(double value, absl::Time now) {
  absl::MutexLock lock(&mu_);
  if (ring_.size() < capacity_) {
    ring_.emplace_back(now, value);
  } else {
    ring_[next_] = {now, value};
  }
  next_ = (next_ + 1) % capacity_;
}

std::vector<double> RecentWindow::Quantiles(const std::vector<double>& qs, absl::Time now) const {
  std::vector<double> values;
  {
    absl::MutexLock lock(&mu_);
    values.reserve(ring_.size());
    for (const auto& [t, v] : ring_) {
      if (now - t <= window_) values.push_back(v);
    }
  }
  std::vector<double> out(qs.size(), 0.0);
  if (values.empty()) return out;
  // The nearest-rank element of each quantile, selected in linear time: the monitor asks for
  // these every second over up to 65,536 values.
  for (size_t i = 0; i < qs.size(); ++i) {
    const double rank = std::ceil(std::clamp(qs[i], 0.0, 1.0) * values.size());
    const auto nth = values.begin() + (static_cast<ptrdiff_t>(std::max(1.0, rank)) - 1);
    std::nth_element(values.begin(), nth, values.end());
    out[i] = *nth;
  }
  return out;
}

void ExpositionWriter::Family(const std::string& name, const std::string& help,
                              const std::string& type) {
  // In text format 0.0.4 a counter's HELP/TYPE lines carry its full name, _total included.
  const std::string& family = name;
  absl::StrAppend(&out_, "# HELP ", family, " ", help, "\n# TYPE ", family, " ", type, "\n");
}

void ExpositionWriter::Sample(const std::string& name, const MetricLabels& labels, double value) {
  absl::StrAppend(&out_, name, LabelText(labels), " ", FormatValue(value), "\n");
}

void ExpositionWriter::HistogramSamples(const std::string& name, const MetricLabels& labels,
                                        const Histogram::Snapshot& h) {
  uint64_t cumulative = 0;
  for (size_t i = 0; i < h.counts.size(); ++i) {
    cumulative += h.counts[i];
    MetricLabels l = labels;
    l.emplace_back("le", i < h.upper_bounds.size() ? FormatValue(h.upper_bounds[i]) : "+Inf");
    Sample(name + "_bucket", l, static_cast<double>(cumulative));
  }
  Sample(name + "_sum", labels, h.sum);
  Sample(name + "_count", labels, static_cast<double>(h.count));
}

struct MetricsServer::Impl {
  httplib::Server server;
  std::thread thread;
};

MetricsServer::MetricsServer() = default;
MetricsServer::~MetricsServer() { Stop(); }

absl::Status MetricsServer::Start(const std::string& address, std::function<std::string()> render) {
  auto hp = SplitHostPort(address, "--metrics-listen");
  if (!hp.ok()) return hp.status();
  impl_ = std::make_unique<Impl>();
  impl_->server.set_socket_options(ExclusiveSocketOptions);
  impl_->server.Get("/metrics", [render](const httplib::Request&, httplib::Response& res) {
    res.set_content(render(), "text/plain; version=0.0.4; charset=utf-8");
  });
  if (hp->second == 0) {
    port_ = impl_->server.bind_to_any_port(hp->first);
  } else {
    port_ = impl_->server.bind_to_port(hp->first, hp->second) ? hp->second : -1;
  }
  if (port_ <= 0) return CannotListen("--metrics-listen", address);
  impl_->thread = std::thread([this] { impl_->server.listen_after_bind(); });
  return absl::OkStatus();
}

void MetricsServer::Stop() {
  if (impl_ == nullptr) return;
  impl_->server.stop();
  if (impl_->thread.joinable()) impl_->thread.join();
  impl_.reset();
}

}  // namespace shardserve
