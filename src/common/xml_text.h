// Text for XML character data and attribute values (PIDF, IMDN documents
// the node writes): the five characters XML gives meaning to, as entities.
#pragma once

#include <string>
#include <string_view>

namespace keyfed {

std::string xml_text(std::string_view text);

}  // namespace keyfed
