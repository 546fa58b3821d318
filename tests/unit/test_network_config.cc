// The [network] table of the server settings file as the provider reads it
// (serve/serve_config.h): `queue` as one endpoint or an array of them, the CA, key file and
// journal paths, and clear errors for wrong types and unknown keys.
#include <gtest/gtest.h>

#include "core/error.h"
#include "serve/serve_config.h"

namespace alem::serve {
namespace {

TEST(NetworkConfig, QueueAsAStringOrAnArray) {
  const ServeConfigFile one = parse_serve_config(
      "[network]\nqueue = \"queue.example.org:7400\"\nqueue_ca = \"ca.pem\"\n"
      "provider_key = \"p.key\"\nusage_journal = \"u.journal\"\n",
      "one.toml");
  ASSERT_TRUE(one.queue);
  EXPECT_EQ(*one.queue, "queue.example.org:7400");
  EXPECT_EQ(one.queue_endpoints, std::vector<std::string>{"queue.example.org:7400"});
  EXPECT_EQ(*one.queue_ca, "ca.pem");
  EXPECT_EQ(*one.provider_key, "p.key");
  EXPECT_EQ(*one.usage_journal, "u.journal");

  const ServeConfigFile many =
      parse_serve_config("[network]\nqueue = [\"a:1\", \"\", \"b:2\"]\n", "many.toml");
  EXPECT_EQ(many.queue_endpoints, (std::vector<std::string>{"a:1", "b:2"}));
  EXPECT_EQ(*many.queue, "a:1");

  const ServeConfigFile empty = parse_serve_config("[network]\nqueue = \"\"\n", "empty.toml");
  EXPECT_TRUE(empty.queue_endpoints.empty());
  EXPECT_FALSE(empty.provider_key.has_value());
}

TEST(NetworkConfig, WrongTypesAndUnknownKeysAreErrors) {
  auto error_of = [](const std::string& text) -> std::string {
    try {
      parse_serve_config(text, "bad.toml");
    } catch (const Error& e) {
      return e.what();
    }
    return "";
  };
  EXPECT_NE(error_of("[network]\nqueue = 7400\n").find("string or an array of strings"),
            std::string::npos);
  EXPECT_NE(error_of("[network]\nqueue = [\"a:1\", 2]\n").find("line 2"), std::string::npos);
  EXPECT_NE(error_of("[network]\nqueue_ca = true\n").find("queue_ca must be a string"),
            std::string::npos);
  EXPECT_NE(error_of("[network]\nprovider_keys = \"x\"\n").find("unknown key"), std::string::npos);
}

}  // namespace
}  // namespace alem::serve
