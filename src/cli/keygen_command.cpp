#include "cli/keygen_command.h"

#include "dnskey/domain_name.h"
#include "federation/identity.h"

namespace keyfed {

CLI::App* add_keygen_command(CLI::App& app, KeygenOptions& options) {
  CLI::App* cmd = app.add_subcommand("keygen", "Generate a federation key (0600 PEM) and print its KEY record");
  cmd->add_option("domain", options.domain, "Domain the key is for")->required();
  cmd->add_option("--out", options.out, "Private key file to create (refuses to overwrite)")->required();
  cmd->add_option("--algorithm", options.algorithm, "ed25519 (default) or p256")
      ->check(CLI::IsMember({"ed25519", "p256"}));
  cmd->add_option("--ttl", options.ttl, "TTL of the printed record")->check(CLI::Range(0, 2147483647));
  cmd->footer("Prints the record to add to the domain's zone, e.g.\n"
              "  _impp._tcp.alpha.test. 300 IN KEY 512 1 15 <base64>\n"
              "Exit status: 0 written; 2 bad input or the file exists.");
  return cmd;
}

ExitStatus run_keygen(const KeygenOptions& options, std::ostream& out, std::ostream& err) {
  Result<std::string> domain = normalize_domain(options.domain);
  if (!domain) {
    err << "keyfed: error: " << domain.error().message << "\n";
    return ExitStatus::BadInput;
  }
  std::uint8_t algorithm = options.algorithm == "p256" ? kAlgorithmEcdsaP256 : kAlgorithmEd25519;
  if (Status s = generate_key_file(options.out, algorithm); !s) {
    err << "keyfed: error: " << s.error().message << "\n";
    return ExitStatus::BadInput;
  }
  // Read it back through the same path a node uses, so the record printed is
  // exactly what the node will present.
  Result<DomainIdentity> identity = load_domain_identity(*domain, options.out);
  if (!identity) {
    err << "keyfed: error: " << identity.error().message << "\n";
    return ExitStatus::InternalError;
  }
  out << key_record_text(*domain, identity->public_key, static_cast<std::uint32_t>(options.ttl)) << "\n";
  return ExitStatus::Ok;
}

}  // namespace keyfed
